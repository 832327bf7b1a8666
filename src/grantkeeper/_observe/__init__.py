"""What operators see of grantkeeper: structured log events (``log``) and, when the
OpenTelemetry API is installed, metrics and spans (``telemetry``). Never a secret."""
