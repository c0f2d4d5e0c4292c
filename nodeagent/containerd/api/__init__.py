"""Generated gRPC stubs. Do not edit: change ../protos and run `python -m nodeagent.containerd.generate`."""
