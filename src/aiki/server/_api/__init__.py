"""The HTTP API's endpoints: `runs` for applications, `workers` for workers."""
