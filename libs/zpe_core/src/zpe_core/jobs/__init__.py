"""The job machinery: the job and task model, the service that submits, counts and
finishes jobs, the task runner and the background maintenance loop."""
