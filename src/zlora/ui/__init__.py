"""The web UI: `zlora ui` serves the New Training Job form, the job queue and each job's live progress."""
