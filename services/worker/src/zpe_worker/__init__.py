"""The compute plane: runs displacement tasks with the engines of ``zpe_core``."""
