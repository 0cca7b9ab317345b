from __future__ import annotations

import pytest

from ssl_zoo import Method, register_method, registry
from ssl_zoo.errors import UserError


def test_our_methods_come_through_the_entry_point_group():
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group=registry.ENTRY_POINT_GROUP)}
    assert {"swav", "simclr", "moco", "pcl"} <= names
    assert {"swav", "simclr", "moco", "pcl"} <= set(registry.method_names())


def test_unknown_method_suggests_the_closest_names():
    with pytest.raises(UserError, match=r"unknown method 'swaw'; did you mean 'swav'"):
        registry.get_method("swaw")


def test_decorator_registers_a_method():
    @register_method("dummy-decorated")
    class Dummy(Method):
        description = "a dummy"

    assert registry.get_method("dummy-decorated") is Dummy
    assert registry.list_methods()["dummy-decorated"] == "a dummy"
    with pytest.raises(TypeError):
        register_method("bad")(object)


def test_method_from_a_users_file(toy_method_file):
    cls = registry.get_method(f"{toy_method_file}:Toy")
    assert issubclass(cls, Method) and cls.name == "toy"
    # a file with a single Method class needs no class name
    assert registry.get_method(str(toy_method_file)) is cls
    with pytest.raises(UserError, match="did you mean 'Toy'"):
        registry.get_method(f"{toy_method_file}:Tyo")


def test_method_file_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match="method file not found"):
        registry.get_method(str(tmp_path / "missing.py"))
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(UserError, match="importing .* failed: RuntimeError: boom"):
        registry.get_method(str(broken))
