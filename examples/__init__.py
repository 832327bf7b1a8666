"""The README's agent-framework snippets, as files: tests/test_agent_frameworks.py runs each
one as it is, and checks that the README shows each one as it is."""
