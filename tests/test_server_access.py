"""Tokens and the server config file (pure, no server process)."""

import os
import stat

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kachery_core.errors import ConfigError
from kachery_server.access import Access, add_token, load_settings, remove_token, token_digest


def test_tokens_are_stored_hashed_and_permissions_apply(tmp_path):
    config = str(tmp_path / "server.toml")
    writer = add_token(config, "alice", write=True)
    reader = add_token(config, "bob")
    text = open(config).read()
    assert writer not in text and reader not in text
    assert token_digest(writer) in text
    assert stat.S_IMODE(os.stat(config).st_mode) == 0o600
    settings = load_settings(config)
    access = Access(settings.tokens)
    assert access.check(None, write=False) is None                    # public reads
    assert access.check(f"Bearer {writer}", write=True) is None
    assert access.check(None, write=True)[0] == 401
    assert access.check("Bearer wrong", write=True)[0] == 401
    assert access.check(f"Basic {writer}", write=True)[0] == 401
    assert access.check(f"Bearer {reader}", write=True)[0] == 403


def test_private_server_needs_a_token_for_reads(tmp_path):
    config = str(tmp_path / "server.toml")
    reader = add_token(config, "bob")
    access = Access(load_settings(config).tokens, private=True)
    assert access.check(None, write=False)[0] == 401
    assert access.check(f"Bearer {reader}", write=False) is None


def test_duplicate_and_bad_names_are_refused(tmp_path):
    config = str(tmp_path / "server.toml")
    add_token(config, "alice")
    with pytest.raises(ConfigError, match="already exists"):
        add_token(config, "alice")
    with pytest.raises(ConfigError):
        add_token(config, "two\nlines")


def test_names_with_quotes_survive_the_round_trip(tmp_path):
    config = str(tmp_path / "server.toml")
    add_token(config, 'say "hi" \\ é')
    assert load_settings(config).tokens[0].name == 'say "hi" \\ é'


def test_settings_from_file(tmp_path):
    config = tmp_path / "server.toml"
    config.write_text('storage_dir = "/x"\nport = 9000\nprivate = true\nmax_upload = "1M"\n')
    settings = load_settings(str(config))
    assert (settings.storage_dir, settings.port, settings.private, settings.max_upload) == \
        ("/x", 9000, True, 1 << 20)


def test_broken_config_is_a_config_error(tmp_path):
    config = tmp_path / "server.toml"
    config.write_text("port = [")
    with pytest.raises(ConfigError, match="server config"):
        load_settings(str(config))


# ------------------------------------------------------ removal and reload

def test_remove_token_keeps_everything_else(tmp_path):
    config = tmp_path / "server.toml"
    config.write_text('# my server\nport = 9000\nprivate = true\n')
    add_token(str(config), "alice", write=True)
    add_token(str(config), 'bob "the" reader')
    add_token(str(config), "carol")
    os.chmod(config, 0o640)
    remove_token(str(config), 'bob "the" reader')
    text = config.read_text()
    assert text.startswith('# my server\nport = 9000\nprivate = true\n')
    settings = load_settings(str(config))
    assert [t.name for t in settings.tokens] == ["alice", "carol"]
    assert settings.tokens[0].write and settings.port == 9000 and settings.private
    assert os.stat(config).st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["server.toml"]  # no temp file left
    with pytest.raises(ConfigError, match="no token named"):
        remove_token(str(config), "bob")


def test_access_follows_the_config_file(tmp_path, monkeypatch):
    monkeypatch.setattr(Access, "RELOAD_INTERVAL", 0)
    config = tmp_path / "server.toml"
    alice = add_token(str(config), "alice", write=True)
    access = Access(load_settings(str(config)).tokens, config_path=str(config))
    assert access.check(f"Bearer {alice}", write=True) is None
    bob = add_token(str(config), "bob", write=True)
    assert access.check(f"Bearer {bob}", write=True) is None
    remove_token(str(config), "alice")
    assert access.check(f"Bearer {alice}", write=True) == (401, "bad token")
    config.write_text(config.read_text() + "\n[[tokens]]\nname = 3 = 4\n")  # broken: keep what we have
    assert access.check(f"Bearer {bob}", write=True) is None


_NAMES = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\0"),
                 min_size=1, max_size=12)


@given(names=st.lists(_NAMES, min_size=1, max_size=6, unique=True), data=st.data())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_remove_token_removes_exactly_one_table(tmp_path, names, data):
    config = tmp_path / f"server-{abs(hash(tuple(names)))}.toml"
    config.write_text("# comment kept\nport = 8080\n")
    for name in names:
        add_token(str(config), name, write=data.draw(st.booleans()))
        with open(config, "a", encoding="utf-8") as file:
            file.write(f"# after {len(name)}\n")  # comments between tables
    before = load_settings(str(config)).tokens
    assert [token.name for token in before] == names  # any name survives the file
    victim = data.draw(st.sampled_from(names))
    remove_token(str(config), victim)
    after = load_settings(str(config)).tokens
    assert after == tuple(token for token in before if token.name != victim)
    assert config.read_text(encoding="utf-8").startswith("# comment kept\nport = 8080\n")
    config.unlink()
