"""ssl-zoo: self-supervised visual representation learning with SwAV, SimCLR, MoCo v2 and PCL."""

from ssl_zoo.errors import ConfigError, DataError, UserError
from ssl_zoo.export import load_backbone
from ssl_zoo.method import Method, MethodConfig, StepOutput, TrainContext
from ssl_zoo.registry import get_method, register_method

__version__ = "0.1.0"


__all__ = [
    "ConfigError", "DataError", "Method", "MethodConfig", "StepOutput", "TrainContext",
    "UserError", "get_method", "load_backbone", "register_method", "__version__",
]
