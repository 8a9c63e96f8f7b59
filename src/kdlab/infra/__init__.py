"""Layer 1, infrastructure: atomic files of tensors and plain data (io), typed params and their errors (schema),
the process's device, threads and precision (runtime), data parallelism (distributed) and MLflow (tracking, the
only mlflow import). Imports nothing else of kdlab."""
