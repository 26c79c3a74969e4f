"""The SkyHub emulator (``skysync sandbox``): a real HTTP server standing in for SkyHub."""

from skysync.emulator.sandbox import LINKED_DELETE_ERROR, Sandbox, SandboxConfig, main_sandbox

__all__ = ["LINKED_DELETE_ERROR", "Sandbox", "SandboxConfig", "main_sandbox"]
