"""imports=[...]: the user's own modules, imported before anything is built (each failure one clear line)."""

import sys

import pytest

from reparam.errors import UserError
from reparam.user_modules import import_user_modules


def test_a_module_in_the_current_directory_and_a_file_anywhere_are_imported(tmp_path, monkeypatch) -> None:
    (tmp_path / "here_mod_a.py").write_text("VALUE = 'a'\n")
    elsewhere = tmp_path / "sub" / "there_mod_b.py"
    elsewhere.parent.mkdir()
    elsewhere.write_text("VALUE = 'b'\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    try:
        a, b = import_user_modules(["here_mod_a", str(elsewhere)])
        assert (a.VALUE, b.VALUE) == ("a", "b")
        assert import_user_modules([str(elsewhere)])[0] is b  # imported once
    finally:
        sys.modules.pop("here_mod_a", None)
        sys.modules.pop("reparam_user_there_mod_b", None)


def test_each_failure_is_one_line_that_says_which(tmp_path, monkeypatch) -> None:
    (tmp_path / "needs_missing_mod.py").write_text("import a_module_nobody_has\n")
    (tmp_path / "raises_mod.py").write_text("raise RuntimeError('setup went wrong')\n")
    monkeypatch.chdir(tmp_path)
    cases = {
        "not_a_module_here": "imports: no module 'not_a_module_here' here (looked in the current directory",
        "needs_missing_mod": "imports: importing 'needs_missing_mod' failed: ModuleNotFoundError: No module named "
        "'a_module_nobody_has'",
        "raises_mod": "imports: importing 'raises_mod' failed: RuntimeError: setup went wrong",
        str(tmp_path / "nowhere.py"): f"imports: {tmp_path / 'nowhere.py'} does not exist",
    }
    for name, said in cases.items():
        with pytest.raises(UserError) as info:
            import_user_modules([name])
        assert str(info.value).startswith(said), str(info.value)
    assert "raises_mod" not in sys.modules and import_user_modules(None) == []
