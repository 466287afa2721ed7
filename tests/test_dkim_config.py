"""[dkim] in the configuration: keys read at load time, every problem named with its file."""

from __future__ import annotations

import base64
import os
import random
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from mailgate.config import ConfigError, parse_config
from mailgate.config.dkim import keys_for, public_record
from tests.support.needs import need, need_tool


def rsa_pem(bits: int = 2048, pkcs8: bool = False) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    fmt = (serialization.PrivateFormat.PKCS8 if pkcs8
           else serialization.PrivateFormat.TraditionalOpenSSL)
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def problems(text: str, tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "mailgate.toml", base_dir=tmp_path)
    return "\n".join(info.value.problems)


def test_single_rsa_key_is_loaded(tmp_path: Path) -> None:
    write(tmp_path / "org.key", rsa_pem())
    config = parse_config('[dkim."Example.ORG"]\nselector = "s2026"\nkey_file = "org.key"\n',
                          "t", base_dir=tmp_path)
    (key,) = config.dkim["example.org"]
    assert (key.domain, key.selector, key.algorithm, key.bits) == (
        "example.org", "s2026", "rsa-sha256", 2048)
    assert key.key_file == tmp_path / "org.key"
    assert key.private.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert key.record_name == "s2026._domainkey.example.org"
    assert public_record(key).startswith("v=DKIM1; k=rsa; p=MIIBIjAN")
    assert "private" not in repr(key).split("key_file")[1].split("public")[0]
    # A subdomain signs with its parent's key (relaxed DMARC alignment); others none.
    assert keys_for(config.dkim, "news.example.org") == (key,)
    assert keys_for(config.dkim, "example.net") == ()
    assert keys_for(config.dkim, "org") == ()


def test_dual_signing_list_and_key_formats(tmp_path: Path) -> None:
    write(tmp_path / "rsa8.key", rsa_pem(pkcs8=True))
    seed = os.urandom(32)
    write(tmp_path / "ed.key", base64.b64encode(seed) + b"\n")
    ed_pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    write(tmp_path / "ed.pem", ed_pem)
    config = parse_config(
        '[[dkim."example.net"]]\nselector = "r"\nkey_file = "rsa8.key"\n'
        '[[dkim."example.net"]]\nselector = "e"\nkey_file = "ed.key"\n'
        'algorithm = "ed25519-sha256"\n'
        '[dkim."example.com"]\nselector = "p"\nkey_file = "ed.pem"\n'
        'algorithm = "ed25519-sha256"\n', "t", base_dir=tmp_path)
    rsa_key, ed_key = config.dkim["example.net"]
    assert rsa_key.algorithm == "rsa-sha256"
    assert rsa_key.private.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert ed_key.private == base64.b64encode(seed)
    public = ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert public_record(ed_key) == f"v=DKIM1; k=ed25519; p={base64.b64encode(public).decode()}"
    assert config.dkim["example.com"][0].key_type == "ed25519"


def test_defaults_have_no_keys() -> None:
    assert dict(parse_config("", "t").dkim) == {}


@pytest.mark.parametrize(("setup", "entry", "expected"), [
    (None, 'selector = "s"\nkey_file = "missing.key"',
     'dkim."example.org".key_file = "missing.key": cannot read the key file {tmp}/missing.key'
     ": No such file or directory"),
    (b"hello", 'selector = "s"\nkey_file = "k"',
     "{tmp}/k is not a private key: expected PEM"),
    ("rsa1024-ok", 'selector = "s"\nkey_file = "k"\nalgorithm = "ed25519-sha256"',
     '{tmp}/k holds an RSA key, but algorithm is "ed25519-sha256"; set algorithm = '
     '"rsa-sha256"'),
    ("rsa512", 'selector = "s"\nkey_file = "k"',
     "{tmp}/k is a 512-bit RSA key; DKIM needs at least 1024 bits (RFC 8301)"),
    ("ec", 'selector = "s"\nkey_file = "k"',
     "{tmp}/k holds a key of type EC; DKIM signs with RSA"),
    ("rsa1024-ok", 'key_file = "k"', 'dkim."example.org".selector: missing'),
    ("rsa1024-ok", 'selector = "bad selector"\nkey_file = "k"', "is not a selector"),
    ("rsa1024-ok", 'selector = "s"\nkey_file = "k"\nalgorithm = "rsa-sha1"',
     'dkim."example.org".algorithm = "rsa-sha1": must be one of rsa-sha256, ed25519-sha256'),
    ("rsa1024-ok", 'selector = "s"\nkeyfile = "k"',
     'dkim."example.org".keyfile = "k": unknown key; did you mean dkim."example.org".key_file?'),
])
def test_bad_entries_are_named(tmp_path: Path, setup: object, entry: str,
                               expected: str) -> None:
    if setup == "rsa1024-ok":
        write(tmp_path / "k", rsa_pem(1024))
    elif setup == "rsa512":
        # cryptography refuses to make keys under 1024 bits; a 512-bit one from its numbers.
        write(tmp_path / "k", _rsa512_pem())
    elif setup == "ec":
        write(tmp_path / "k", ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    elif isinstance(setup, bytes):
        write(tmp_path / "k", setup)
    text = problems(f'[dkim."example.org"]\n{entry}\n', tmp_path)
    assert expected.format(tmp=tmp_path) in text


def _rsa512_pem() -> bytes:
    # A 512-bit key from two 256-bit primes (made for this test; it signs nothing).
    rng = random.Random(8301)
    p = _next_prime(rng.getrandbits(256) | 3 << 254)
    q = _next_prime(rng.getrandbits(256) | 3 << 254)
    e = 65537
    n = p * q
    d = pow(e, -1, (p - 1) * (q - 1))
    numbers = rsa.RSAPrivateNumbers(
        p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p), rsa.RSAPublicNumbers(e, n))
    try:
        key = numbers.private_key(unsafe_skip_rsa_key_validation=True)
    except ValueError:
        pytest.skip("this cryptography build refuses 512-bit keys even to load")
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _next_prime(n: int) -> int:
    n |= 1
    while not all(pow(a, n - 1, n) == 1 for a in (2, 3, 5, 7, 11, 13, 17, 19, 23)):
        n += 2
    return n


def test_a_directory_is_no_key_file(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    text = problems('[dkim."example.org"]\nselector = "s"\nkey_file = "keys"\n', tmp_path)
    assert f"cannot read the key file {tmp_path / 'keys'}: Is a directory" in text


def test_a_key_file_this_user_cannot_read_stops_serve_only() -> None:
    """Permission denied: other commands still load the configuration (sendmail, queue
    run by the mail user); `serve` refuses to start, naming the file. Run as nobody."""
    import tempfile

    setpriv = need_tool("setpriv", "util-linux")
    need(os.geteuid() == 0, "root, to run a command as nobody")
    with tempfile.TemporaryDirectory() as name:  # pytest's tmp_path is root's alone
        tmp_path = Path(name)
        tmp_path.chmod(0o755)
        _run_as_nobody(setpriv, tmp_path)


def _run_as_nobody(setpriv: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    write(tmp_path / "k", rsa_pem(1024))
    conf = tmp_path / "mailgate.toml"
    conf.write_text('data_dir = "/nonexistent/data"\n'
                    '[dkim."example.org"]\nselector = "s"\nkey_file = "k"\n')
    conf.chmod(0o644)
    code = ("import sys; from pathlib import Path; from mailgate.config import load_config;"
            "from mailgate.config.dkim import unreadable_keys, keys_for;"
            "c = load_config(Path(sys.argv[1]));"
            "print(keys_for(c.dkim, 'example.org'), unreadable_keys(c.dkim))")
    src = Path(__file__).resolve().parent.parent / "src"
    probe = subprocess.run([setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                            sys.executable, "-c", "print(1)"], capture_output=True, check=False)
    need(probe.returncode == 0, f"a Python nobody can run ({sys.executable} is not)")
    result = subprocess.run(
        [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable,
         "-c", code, str(conf)],
        capture_output=True, text=True, check=False, env={"PYTHONPATH": str(src)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("() [")
    assert f"cannot read the key file {tmp_path / 'k'}: Permission denied" in result.stdout
    serve = subprocess.run(
        [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable,
         "-m", "mailgate", "serve", "--config", str(conf)],
        capture_output=True, text=True, check=False, env={"PYTHONPATH": str(src)},
        timeout=60)
    assert serve.returncode == 2, serve.stderr
    assert f"cannot read the key file {tmp_path / 'k'}: Permission denied" in serve.stderr
    assert "start serve as root" in serve.stderr


def test_encrypted_key_and_repeated_selector(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    write(tmp_path / "enc", key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    write(tmp_path / "k", rsa_pem(1024))
    text = problems('[dkim."example.org"]\nselector = "s"\nkey_file = "enc"\n'
                    '[[dkim."example.net"]]\nselector = "a"\nkey_file = "k"\n'
                    '[[dkim."example.net"]]\nselector = "A"\nkey_file = "k"\n'
                    '[dkim."not a domain"]\nselector = "s"\nkey_file = "k"\n', tmp_path)
    assert "enc is encrypted with a passphrase" in text
    assert 'dkim."example.net"[1].selector = "A": is already used for example.net' in text
    assert '[dkim] keys are the signing domains' in text


@pytest.mark.parametrize("algorithm", ["rsa-sha256", "ed25519-sha256"])
def test_keygen_writes_a_private_key_and_prints_its_record(tmp_path: Path,
                                                          algorithm: str) -> None:
    from click.testing import CliRunner

    from mailgate.cli import main
    from mailgate.config.dkim import load_key

    out = tmp_path / "new.key"
    result = CliRunner().invoke(main, ["dkim", "keygen", "Example.ORG", "--selector", "s1",
                                       "--algorithm", algorithm, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.stat().st_mode & 0o777 == 0o600
    line = result.stdout.strip()
    assert line.startswith('s1._domainkey.example.org. IN TXT "v=DKIM1; k=')
    strings = re.findall(r'"([^"]*)"', line)
    assert all(len(s) <= 255 for s in strings)
    assert len(strings) == (2 if algorithm == "rsa-sha256" else 1)
    key = load_key(out, algorithm)  # type: ignore[arg-type]
    assert "".join(strings) == public_record(key)
    again = CliRunner().invoke(main, ["dkim", "keygen", "example.org", "--selector", "s1",
                                      "--out", str(out)])
    assert again.exit_code == 2
    assert "already exists" in again.output
    bad = CliRunner().invoke(main, ["dkim", "keygen", "exa mple", "--selector", "s1"])
    assert bad.exit_code == 2 and "is not a domain name" in bad.output


def test_renewed_keys_follow_the_file_and_keep_what_cannot_be_read(tmp_path: Path) -> None:
    """SIGHUP's [dkim] (`renew_keys`): the table the configuration names now, each key as
    read now. A key file this process may not read keeps the key in service under the
    same domain and selector; a new selector whose file cannot be read is left out, and
    a domain with nothing left is not signed for. Each file not read is named."""
    from mailgate.config.dkim import DKIMKey, generate_key, load_key, renew_keys

    def key(name: str, domain: str, selector: str) -> DKIMKey:
        path = tmp_path / name
        path.write_bytes(generate_key("ed25519-sha256"))
        return load_key(path, "ed25519-sha256", domain, selector)

    def unreadable(domain: str, selector: str) -> DKIMKey:
        return DKIMKey(domain, selector, "ed25519-sha256", tmp_path / f"{selector}.key",
                       b"", "", 0, unreadable="Permission denied")

    old_s1, gone = key("s1.key", "example.org", "s1"), key("g.key", "example.com", "g")
    new_s3 = key("s3.key", "example.org", "s3")
    table, problems = renew_keys(
        {"example.org": (old_s1,), "example.com": (gone,)},
        {"example.org": (unreadable("example.org", "s1"), new_s3,
                         unreadable("example.org", "s2")),
         "example.net": (unreadable("example.net", "n1"),)})
    assert dict(table) == {"example.org": (old_s1, new_s3)}
    assert problems == [
        f"kept the DKIM key in service: dkim.example.org: cannot read the key file "
        f"{tmp_path / 's1.key'}: Permission denied",
        f"left out the new DKIM selector 's2': dkim.example.org: cannot read the key "
        f"file {tmp_path / 's2.key'}: Permission denied",
        f"left out the new DKIM selector 'n1': dkim.example.net: cannot read the key "
        f"file {tmp_path / 'n1.key'}: Permission denied"]
