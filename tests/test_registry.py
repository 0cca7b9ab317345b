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


def test_a_plugin_taking_a_builtin_name_is_a_one_line_error_naming_both():
    class Impostor(Method):
        description = "not simclr"

    with pytest.raises(UserError, match=r"method name 'simclr' of .*Impostor \(register_method\) "
                                        r"is already the entry point ssl_zoo_methods\.simclr"
                                        r":SimCLR") as caught:
        register_method("simclr")(Impostor)
    assert "\n" not in str(caught.value)
    assert registry.get_method("simclr").__name__ == "SimCLR"  # the built-in stays


def test_two_classes_under_one_decorated_name_is_an_error_and_the_same_class_again_is_not():
    @register_method("dup-name")
    class First(Method):
        pass

    register_method("dup-name")(First)  # its module imported again: fine

    class Second(Method):
        pass

    with pytest.raises(UserError, match=r"'dup-name' of .*Second \(register_method\) is "
                                        r"already .*First"):
        register_method("dup-name")(Second)
    assert registry.get_method("dup-name") is First


def test_two_distributions_declaring_one_name_is_an_error_when_it_is_asked_for(monkeypatch):
    from importlib import metadata

    group = registry.ENTRY_POINT_GROUP
    mine = metadata.EntryPoint("clash", "pkg_a.m:A", group)
    theirs = metadata.EntryPoint("clash", "pkg_b.m:B", group)
    monkeypatch.setattr(metadata, "entry_points",
                        lambda group=None: [mine, theirs] if group == registry.ENTRY_POINT_GROUP
                        else [])
    monkeypatch.setattr(registry, "_entry_points", None)
    monkeypatch.setattr(registry, "_clashes", {})
    with pytest.raises(UserError, match=r"'clash' is declared twice: by the entry point "
                                        r"pkg_a\.m:A and by the entry point pkg_b\.m:B"):
        registry.get_method("clash")
    assert "failed to load" in registry.list_methods()["clash"]
