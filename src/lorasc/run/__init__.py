"""The `lorasc` application: the CLI, its settings and run folders, data and model files, the training
loop on Accelerate, checkpoints, metrics and plots. It drives the library (the `lorasc` package above),
which imports nothing from here."""
