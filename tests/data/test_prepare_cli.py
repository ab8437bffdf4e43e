import json

from amoeba_search.cli.prepare import main


def test_prepare_describes_a_file(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("one\n\ntwo\n\nthree")
    assert main([str(tmp_path / "a.txt"), "--json"]) == 0
    [info] = json.loads(capsys.readouterr().out)
    assert info["documents"] == 3 and info["path"] is None


def test_prepare_unknown_corpus_is_one_line(capsys):
    assert main(["austin"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Did you mean 'austen'" in err and "Traceback" not in err
