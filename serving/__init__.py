"""zeroscale's shared kernel: the Knative API model and what two or more components share."""
