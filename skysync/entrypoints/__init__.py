"""How people start skysync: the command line and the embedded one-process daemon."""
