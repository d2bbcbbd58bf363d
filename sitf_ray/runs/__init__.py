"""Run records and what people read of them: the run directory's atomic artifacts and stage ledger
(artifacts), the run context and seeds (context), the report and plots (report), experiment tracking
(tracking), Prometheus telemetry (telemetry), and the console: progress bars, stage lines, quiet Ray logs
(progress, console).
"""
