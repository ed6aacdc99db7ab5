"""Manifest.toml v2: deterministic rendering, exact key order, strict validating parse."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ron.proto.address import Address
from ron.proto.envelope import ErrorCode, RonError
from ron.proto.manifest import (
    MAX_MANIFEST_LEN,
    Encoding,
    Manifest,
    Payment,
    Relations,
    Split,
    format_utc,
)

HEX = "0900f0d8c6d7f6f5f665bcf9961f965477a4020b14846fbf6b07081e6dcb9bef"
ZST_HEX = "ae384a2b2056114c8509416acf27499ec9d33af9b6e2edcec06e34954ec9cbbc"
BR_HEX = "8c28ffd360fd28498a0cbd2186588f2798cdb04f73fe3bdd53f098ce649eab4d"
PARENT = "1" * 64

TOP_LEVEL_ORDER = [
    "schema_version",
    "tld",
    "address",
    "hash_algo",
    "hash_hex",
    "bytes",
    "created_utc",
    "mime",
    "stored_filename",
    "original_filename",
    "license",
]


def minimal(**overrides: object) -> Manifest:
    fields: dict[str, object] = {
        "tld": "text",
        "hash_hex": HEX,
        "bytes": 9,
        "created_utc": "2025-09-01T12:00:00Z",
        "mime": "text/plain; charset=utf-8",
        "original_filename": "rel.txt",
    }
    fields.update(overrides)
    return Manifest(**fields)  # type: ignore[arg-type]


def full() -> Manifest:
    return minimal(
        license="CC-BY-4.0",
        encodings=(
            Encoding(
                coding="zstd", level=15, bytes=18, filename="payload.bin.zst", hash_hex=ZST_HEX
            ),
            Encoding(coding="br", level=9, bytes=13, filename="payload.bin.br", hash_hex=BR_HEX),
        ),
        payment=Payment(
            required=True,
            currency="USD",
            price_model="per_mib",
            price=0.01,
            wallet="lnurl1dp68gurn8ghj7",
            settlement="offchain",
            splits=(Split(account="alice", pct=70.0), Split(account="bob", pct=30.0)),
        ),
        relations=Relations(
            parent=Address(PARENT, "post"), thread=Address(PARENT), source="camera:sony-a7c"
        ),
        ext={"image": {"width": "640", "height": "480"}, "a-ns": {"k": "v"}},
    )


def top_level_keys(text: str) -> list[str]:
    keys = []
    for line in text.splitlines():
        if line.startswith("["):
            break
        if line:
            keys.append(line.split(" = ", 1)[0])
    return keys


def assert_bad(text: str | bytes) -> RonError:
    with pytest.raises(RonError) as info:
        Manifest.parse(text)
    assert info.value.code is ErrorCode.BAD_REQUEST
    return info.value


def test_top_level_keys_are_written_in_the_schema_order() -> None:
    assert top_level_keys(full().render()) == TOP_LEVEL_ORDER
    assert top_level_keys(minimal().render()) == TOP_LEVEL_ORDER[:-1]


def test_render_of_the_reference_bundle_is_exact() -> None:
    manifest = minimal(
        encodings=(
            Encoding(
                coding="zstd", level=15, bytes=18, filename="payload.bin.zst", hash_hex=ZST_HEX
            ),
        )
    )
    assert manifest.render() == (
        "schema_version = 2\n"
        'tld = "text"\n'
        f'address = "b3:{HEX}.text"\n'
        'hash_algo = "b3"\n'
        f'hash_hex = "{HEX}"\n'
        "bytes = 9\n"
        'created_utc = "2025-09-01T12:00:00Z"\n'
        'mime = "text/plain; charset=utf-8"\n'
        'stored_filename = "payload.bin"\n'
        'original_filename = "rel.txt"\n'
        "\n"
        "[[encodings]]\n"
        'coding = "zstd"\n'
        "level = 15\n"
        "bytes = 18\n"
        'filename = "payload.bin.zst"\n'
        f'hash_hex = "{ZST_HEX}"\n'
    )


def test_tables_follow_in_schema_order() -> None:
    text = full().render()
    headers = [line for line in text.splitlines() if line.startswith("[")]
    assert headers == [
        "[[encodings]]",
        "[[encodings]]",
        "[payment]",
        "[relations]",
        "[ext.a-ns]",
        "[ext.image]",
    ]


def test_full_manifest_round_trips() -> None:
    manifest = full()
    text = manifest.render()
    parsed = Manifest.parse(text)
    assert parsed == manifest
    assert parsed.render() == text
    assert Manifest.parse(text.encode("utf-8")) == manifest


def test_rendered_text_is_what_tomllib_reads() -> None:
    doc = tomllib.loads(full().render())
    assert doc["schema_version"] == 2
    assert doc["hash_algo"] == "b3"
    assert doc["address"] == f"b3:{HEX}.text"
    assert doc["payment"]["splits"] == [
        {"account": "alice", "pct": 70.0},
        {"account": "bob", "pct": 30.0},
    ]
    assert doc["relations"]["parent"] == f"b3:{PARENT}.post"
    assert doc["relations"]["thread"] == f"b3:{PARENT}"


def test_address_property_carries_the_tld() -> None:
    assert minimal().address == Address(HEX, "text")


def test_encoding_lookup_by_coding() -> None:
    manifest = full()
    found = manifest.encoding("br")
    assert found is not None and found.hash_hex == BR_HEX
    assert minimal().encoding("zstd") is None


def test_strings_are_escaped_per_toml() -> None:
    tricky = 'quote " backslash \\ tab \t newline \n cr \r bell \x07 del \x7f é 😀 '
    manifest = minimal(ext={"x": {"weird key.with dots": tricky, "plain": "\\u0041"}})
    text = manifest.render()
    assert "\x07" not in text and "\x7f" not in text and "\t" not in text
    assert '"weird key.with dots" = ' in text
    assert Manifest.parse(text) == manifest


def test_ext_is_rendered_sorted_whatever_the_insertion_order() -> None:
    one = minimal(ext={"b": {"z": "1", "a": "2"}, "a": {"k": "v"}})
    two = minimal(ext={"a": {"k": "v"}, "b": {"a": "2", "z": "1"}})
    assert one.render() == two.render()


def test_empty_relations_are_left_out() -> None:
    manifest = minimal(relations=Relations())
    assert manifest.relations is None
    assert "[relations]" not in manifest.render()


def test_integer_price_and_pct_read_as_floats() -> None:
    text = minimal().render() + (
        '\n[payment]\nrequired = false\ncurrency = "sats"\nprice_model = "flat"\n'
        'price = 21\nwallet = "w"\nsplits = [{ account = "a", pct = 100 }]\n'
    )
    payment = Manifest.parse(text).payment
    assert payment is not None
    assert payment.price == 21.0 and isinstance(payment.price, float)
    assert payment.splits == (Split(account="a", pct=100.0),)
    assert payment.settlement == ""


def test_splits_may_total_100_despite_float_rounding() -> None:
    payment = Payment(
        required=True,
        currency="USD",
        price_model="flat",
        price=1.0,
        wallet="w",
        splits=tuple(Split(account=str(i), pct=p) for i, p in enumerate([33.3, 33.3, 33.4])),
    )
    assert len(payment.splits) == 3


def test_splits_over_100_percent_are_refused() -> None:
    with pytest.raises(RonError):
        Payment(
            required=True,
            currency="USD",
            price_model="flat",
            price=1.0,
            wallet="w",
            splits=(Split(account="a", pct=60.0), Split(account="b", pct=50.0)),
        )


def test_toml_datetime_literal_is_accepted_and_normalised() -> None:
    text = minimal().render().replace('"2025-09-01T12:00:00Z"', "2025-09-01T12:00:00Z")
    assert Manifest.parse(text).created_utc == "2025-09-01T12:00:00Z"


def test_address_may_omit_the_tld() -> None:
    text = minimal().render().replace(f'"b3:{HEX}.text"', f'"b3:{HEX}"')
    assert Manifest.parse(text) == minimal()


def test_format_utc_is_rfc3339_with_z() -> None:
    moment = datetime(2025, 9, 1, 14, 0, 0, tzinfo=timezone(timedelta(hours=2)))
    assert format_utc(moment) == "2025-09-01T12:00:00Z"
    assert format_utc(moment.replace(microsecond=5)) == "2025-09-01T12:00:00.000005Z"
    assert format_utc(datetime(999, 1, 2, tzinfo=UTC)) == "0999-01-02T00:00:00Z"
    with pytest.raises(ValueError):
        format_utc(datetime(2025, 1, 1))


GOOD = minimal().render()


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("schema_version = 2", "schema_version = 1"),
        ("schema_version = 2", 'schema_version = "2"'),
        ("schema_version = 2", "schema_version = true"),
        ("schema_version = 2\n", ""),
        ('hash_algo = "b3"', 'hash_algo = "sha256"'),
        (f'hash_hex = "{HEX}"', f'hash_hex = "{HEX.upper()}"'),
        (f'hash_hex = "{HEX}"', f'hash_hex = "{HEX[:-2]}"'),
        (f'address = "b3:{HEX}.text"', f'address = "b3:{PARENT}.text"'),
        (f'address = "b3:{HEX}.text"', f'address = "b3:{HEX}.image"'),
        (f'address = "b3:{HEX}.text"', 'address = "nope"'),
        (f'address = "b3:{HEX}.text"', "address = 7"),
        ('tld = "text"', 'tld = "TEXT"'),
        ('tld = "text"', 'tld = "te/xt"'),
        ("bytes = 9", "bytes = -1"),
        ("bytes = 9", "bytes = 9.0"),
        ("bytes = 9", "bytes = true"),
        ('"2025-09-01T12:00:00Z"', '"2025-09-01 12:00:00"'),
        ('"2025-09-01T12:00:00Z"', '"2025-02-30T12:00:00Z"'),
        ('"2025-09-01T12:00:00Z"', "2025-09-01T12:00:00+02:00"),
        ('"2025-09-01T12:00:00Z"', "2025-09-01T12:00:00"),
        ('mime = "text/plain; charset=utf-8"', 'mime = "text/plain\\r\\nX-Evil: 1"'),
        ('mime = "text/plain; charset=utf-8"', 'mime = "not a mime"'),
        ('mime = "text/plain; charset=utf-8"', 'mime = "text/plaïn"'),
        ('stored_filename = "payload.bin"', 'stored_filename = "../payload.bin"'),
        ('stored_filename = "payload.bin"', 'stored_filename = ".hidden"'),
        ('stored_filename = "payload.bin"', 'stored_filename = "Manifest.toml"'),
        ('original_filename = "rel.txt"', 'original_filename = "dir/rel.txt"'),
        ('original_filename = "rel.txt"', 'original_filename = "a\\u0000b"'),
        ('original_filename = "rel.txt"', 'original_filename = "rel.txt"\nsurprise = 1'),
        ('original_filename = "rel.txt"', 'original_filename = "rel.txt"\nlicense = 5'),
    ],
)
def test_invalid_top_level_fields_are_refused(old: str, new: str) -> None:
    assert old in GOOD
    assert_bad(GOOD.replace(old, new, 1))


ENC = (
    '\n[[encodings]]\ncoding = "zstd"\nlevel = 15\nbytes = 18\n'
    f'filename = "payload.bin.zst"\nhash_hex = "{ZST_HEX}"\n'
)
PAY = (
    '\n[payment]\nrequired = true\ncurrency = "USD"\nprice_model = "per_mib"\n'
    'price = 0.5\nwallet = "w"\n'
)


@pytest.mark.parametrize(
    "tail",
    [
        ENC.replace('"zstd"', '"gzip"'),
        ENC.replace("level = 15", "level = 99"),
        ENC.replace("level = 15", 'level = "15"'),
        ENC.replace('"payload.bin.zst"', '"../../x"'),
        ENC.replace('"payload.bin.zst"', '"payload.bin"'),
        ENC.replace(ZST_HEX, "0" * 63),
        ENC.replace("bytes = 18", "bytes = 18\nextra = 1"),
        ENC + ENC,
        ENC.replace('coding = "zstd"', 'coding = "br"').replace("level = 15", "level = 12"),
        '\nencodings = "zstd"\n',
        PAY.replace("per_mib", "per_gib"),
        PAY.replace("price = 0.5", "price = -1.0"),
        PAY.replace("price = 0.5", "price = nan"),
        PAY.replace("price = 0.5", "price = inf"),
        PAY.replace("price = 0.5", 'price = "0.5"'),
        PAY.replace("required = true", 'required = "yes"'),
        PAY.replace('wallet = "w"', 'wallet = "w\\r\\nSet-Cookie: x"'),
        PAY.replace('wallet = "w"', 'wallet = ""'),
        PAY.replace('currency = "USD"', 'currency = "US D "'),
        PAY.replace('wallet = "w"\n', ""),
        PAY + "splits = [{ account = 'a', pct = 101.0 }]\n",
        PAY + "splits = [{ account = 'a' }]\n",
        PAY + "splits = [{ account = 'a', pct = 1.0, x = 2 }]\n",
        PAY + "splits = 'a'\n",
        PAY + "bonus = 1\n",
        '\n[relations]\nparent = "not-an-address"\n',
        "\n[relations]\nparent = 5\n",
        '\n[relations]\nsibling = "x"\n',
        '\n[relations]\nsource = "a\\nb"\n',
        '\n[ext.bad.nested]\nk = "v"\n',
        "\n[ext.x]\nk = 1\n",
        '\n[ext."a b"]\nk = "v"\n',
        '\next = "x"\n',
    ],
)
def test_invalid_tables_are_refused(tail: str) -> None:
    assert_bad(GOOD + tail)


def test_valid_tables_in_these_tests_parse() -> None:
    # The negative cases above only mean something if their unmutated forms are valid.
    manifest = Manifest.parse(GOOD + ENC + PAY)
    assert manifest.payment is not None and manifest.payment.price == 0.5
    assert manifest.encodings[0].bytes == 18


@pytest.mark.parametrize(
    "tail",
    [
        PAY.replace("price = 0.5", "price = 1" + "0" * 309),
        PAY + "splits = [{ account = 'a', pct = -1" + "0" * 400 + " }]\n",
    ],
)
def test_integer_too_large_for_a_float_is_refused_not_overflowed(tail: str) -> None:
    # Fuzz regression (corpus manifest/malformed-huge-integer-price.toml): tomllib reads
    # integers of any size, and float() of one past ~1.8e308 raised OverflowError.
    assert "finite number" in assert_bad(GOOD + tail).message


def test_float_schema_version_is_refused() -> None:
    # Fuzz regression (corpus manifest/malformed-float-schema-version.toml): 2.0 == 2,
    # so a float version was accepted and silently rewritten as the integer 2.
    assert (
        "schema_version"
        in assert_bad(GOOD.replace("schema_version = 2", "schema_version = 2.0")).message
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not toml at all ===",
        "schema_version = 2",
        "[" * 100_000,
        "x = " + "[" * 5_000 + "]" * 5_000,
        "a" * (MAX_MANIFEST_LEN + 1),
    ],
)
def test_garbage_is_refused_with_bad_request(text: str) -> None:
    assert_bad(text)


def test_non_utf8_bytes_are_refused() -> None:
    assert_bad(b"\xff\xfe" + GOOD.encode("utf-8"))


def test_constructor_validates_too() -> None:
    with pytest.raises(RonError):
        minimal(hash_hex="xyz")
    with pytest.raises(RonError):
        minimal(original_filename="a\udcffb")  # lone surrogate: not encodable
    with pytest.raises(RonError):
        Encoding(coding="zstd", level=15, bytes=-1, filename="a", hash_hex=HEX)


@given(st.text(max_size=2000))
@settings(max_examples=300)
def test_parse_of_arbitrary_text_raises_only_ron_error(text: str) -> None:
    try:
        Manifest.parse(text)
    except RonError as exc:
        assert exc.code is ErrorCode.BAD_REQUEST


@given(st.binary(max_size=500))
def test_parse_of_arbitrary_bytes_raises_only_ron_error(data: bytes) -> None:
    try:
        Manifest.parse(GOOD.encode() + data)
    except RonError as exc:
        assert exc.code is ErrorCode.BAD_REQUEST


_free_text = st.text(
    st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=40
).filter(lambda s: "/" not in s and "\\" not in s and s not in (".", ".."))
_any_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=60)
_hex = st.binary(min_size=32, max_size=32).map(bytes.hex)


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    encodings = []
    if draw(st.booleans()):
        encodings.append(
            Encoding(
                coding="zstd",
                level=draw(st.integers(-5, 22)),
                bytes=draw(st.integers(0, 2**63 - 1)),
                filename="payload.bin.zst",
                hash_hex=draw(_hex),
            )
        )
    payment = None
    if draw(st.booleans()):
        payment = Payment(
            required=draw(st.booleans()),
            currency=draw(st.sampled_from(["USD", "sats", "SOL"])),
            price_model=draw(st.sampled_from(["per_mib", "flat", "per_request"])),
            price=draw(st.floats(0, 1e12, allow_nan=False)),
            wallet=draw(st.from_regex(r"[!-~]{1,20}", fullmatch=True)),
            settlement=draw(st.sampled_from(["", "onchain"])),
            splits=tuple(
                Split(account=a, pct=p)
                for a, p in draw(
                    st.lists(st.tuples(_free_text, st.floats(0, 25, allow_nan=False)), max_size=4)
                )
            ),
        )
    return Manifest(
        tld=draw(st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True)),
        hash_hex=draw(_hex),
        bytes=draw(st.integers(0, 2**63 - 1)),
        created_utc=format_utc(
            draw(st.datetimes(timezones=st.just(UTC), min_value=datetime(1, 1, 2)))
        ),
        mime=draw(st.sampled_from(["text/plain", "image/png", 'text/html; charset="utf-8"'])),
        original_filename=draw(_free_text | st.just("")),
        license=draw(st.none() | _free_text),
        encodings=tuple(encodings),
        payment=payment,
        relations=draw(
            st.builds(
                Relations,
                parent=st.none() | st.builds(Address, _hex, st.none() | st.just("post")),
                source=st.none() | _free_text,
            )
        ),
        ext=draw(
            st.dictionaries(
                st.from_regex(r"[A-Za-z0-9_-]{1,10}", fullmatch=True),
                st.dictionaries(_free_text, _any_text, max_size=3),
                max_size=3,
            )
        ),
    )


@given(manifests())
def test_any_valid_manifest_round_trips_byte_for_byte(manifest: Manifest) -> None:
    text = manifest.render()
    parsed = Manifest.parse(text)
    assert parsed == manifest
    assert parsed.render() == text
