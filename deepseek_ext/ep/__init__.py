"""Expert parallelism: dispatch tokens to the ranks holding their experts, combine the results."""
from deepseek_ext.ep.buffer import Buffer
from deepseek_ext.ep.types import DispatchResult, Handle, Layout

__all__ = ["Buffer", "DispatchResult", "Handle", "Layout"]
