//! Expected values are the server's own output: text from psql with the pinned settings
//! (DateStyle=ISO, IntervalStyle=postgres, TimeZone=UTC, extra_float_digits=3) and binary from
//! the types' `*_send` functions, both taken from PostgreSQL 15.

use super::*;
use crate::event::JsonText;
use bytes::BytesMut;
use postgres_protocol::types as pt;

fn text(oid: u32, s: &str) -> Value {
    TypeRegistry::new().parse_text(oid, s)
}

fn bin(oid: u32, b: &[u8]) -> Value {
    TypeRegistry::new().parse_binary(oid, b)
}

fn t(s: &str) -> Value {
    Value::Text(s.into())
}

fn other(s: &str) -> Value {
    Value::Other(s.into())
}

fn arr(items: Vec<Value>) -> Value {
    Value::Array(items)
}

fn json(v: &Value) -> String {
    serde_json::to_string(v).unwrap()
}

/// Bytes from hex as psql prints a bytea (`\x0102`).
fn hx(s: &str) -> Vec<u8> {
    let s = s.strip_prefix("\\x").unwrap_or(s);
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn buf(f: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
    let mut b = BytesMut::new();
    f(&mut b);
    b.to_vec()
}

// ---- scalars, text format ----

#[test]
fn bool_text() {
    assert_eq!(text(16, "t"), Value::Bool(true));
    assert_eq!(text(16, "f"), Value::Bool(false));
    assert_eq!(text(16, "yes"), other("yes"));
    assert_eq!(text(16, ""), other(""));
}

#[test]
fn integers_text() {
    assert_eq!(text(21, "-32768"), Value::Int(-32768));
    assert_eq!(text(23, "2147483647"), Value::Int(2_147_483_647));
    assert_eq!(text(20, "9223372036854775807"), Value::Int(i64::MAX));
    assert_eq!(text(20, "-9223372036854775808"), Value::Int(i64::MIN));
    assert_eq!(text(26, "4294967295"), Value::Int(4_294_967_295));
    assert_eq!(text(23, "0"), Value::Int(0));
    assert_eq!(text(23, "-0"), Value::Int(0));
    for bad in [
        "",
        "-",
        "+1",
        " 1",
        "1 ",
        "1.0",
        "9223372036854775808",
        "abc",
        "١",
    ] {
        assert_eq!(text(20, bad), other(bad), "{bad:?}");
    }
}

#[test]
fn floats_text() {
    assert_eq!(text(701, "1.5"), Value::Float(1.5));
    assert_eq!(text(701, "1e+300"), Value::Float(1e300));
    assert_eq!(text(701, "1e-320"), Value::Float(1e-320));
    assert_eq!(text(700, "1.5e+20"), Value::Float(1.5e20));
    // float4 text keeps its shortest decimal.
    assert_eq!(json(&text(700, "1.1")), "1.1");
    let neg_zero = text(701, "-0");
    assert!(matches!(neg_zero, Value::Float(f) if f == 0.0 && f.is_sign_negative()));
    assert!(matches!(text(701, "NaN"), Value::Float(f) if f.is_nan()));
    assert_eq!(text(701, "Infinity"), Value::Float(f64::INFINITY));
    assert_eq!(text(700, "-Infinity"), Value::Float(f64::NEG_INFINITY));
    assert_eq!(json(&text(701, "NaN")), "\"NaN\"");
    assert_eq!(json(&text(701, "-Infinity")), "\"-Infinity\"");
    for bad in ["", "inf", "nan", "+1", "1,5", "x"] {
        assert_eq!(text(701, bad), other(bad), "{bad:?}");
    }
}

#[test]
fn numeric_text_kept_exact() {
    for s in [
        "12.50",
        "0",
        "-0.00001",
        "12345678901234567890.1234",
        "0.00000000000000000001",
        "NaN",
        "Infinity",
        "-Infinity",
    ] {
        assert_eq!(text(1700, s), Value::Numeric(s.into()));
    }
    assert_eq!(json(&text(1700, "12.50")), "\"12.50\"");
    for bad in ["", "-", "1.", ".5", "1e5", "nan", "1.2.3", "12a"] {
        assert_eq!(text(1700, bad), other(bad), "{bad:?}");
    }
}

#[test]
fn text_like_types_keep_their_text() {
    assert_eq!(text(25, "héllo ✓ 𝄞"), t("héllo ✓ 𝄞"));
    assert_eq!(text(1043, ""), t(""));
    // bpchar keeps the padding the server sends.
    assert_eq!(text(1042, "a  "), t("a  "));
    assert_eq!(text(19, "pg_class"), t("pg_class"));
    assert_eq!(text(18, "a"), t("a"));
    assert_eq!(text(18, "\\351"), t("\\351"));
    assert_eq!(text(869, "192.168.0.1/24"), t("192.168.0.1/24"));
    assert_eq!(text(650, "10.0.0.0/8"), t("10.0.0.0/8"));
    assert_eq!(text(829, "08:00:2b:01:02:03"), t("08:00:2b:01:02:03"));
    assert_eq!(
        text(774, "08:00:2b:01:02:03:04:05"),
        t("08:00:2b:01:02:03:04:05")
    );
    assert_eq!(text(790, "$1,000.00"), t("$1,000.00"));
    assert_eq!(text(142, "<a>b</a>"), t("<a>b</a>"));
}

#[test]
fn unknown_oids_are_other() {
    assert_eq!(text(600, "(1,2)"), other("(1,2)"));
    assert_eq!(text(99_999, "whatever"), other("whatever"));
    assert_eq!(json(&text(99_999, "x")), "\"x\"");
}

#[test]
fn bytea_text_hex_and_escape() {
    assert_eq!(
        text(17, "\\x00ff5c41"),
        Value::Bytea(vec![0, 0xff, 0x5c, 0x41])
    );
    assert_eq!(
        text(17, "\\xDEADbeef"),
        Value::Bytea(vec![0xde, 0xad, 0xbe, 0xef])
    );
    assert_eq!(text(17, "\\x"), Value::Bytea(vec![]));
    // bytea_output = escape prints the same bytes as this.
    assert_eq!(
        text(17, "\\000\\377\\\\A"),
        Value::Bytea(vec![0, 0xff, 0x5c, 0x41])
    );
    assert_eq!(text(17, "abc"), Value::Bytea(b"abc".to_vec()));
    assert_eq!(text(17, ""), Value::Bytea(vec![]));
    for bad in ["\\x0", "\\xzz", "\\", "\\9", "\\12", "\\400", "a\\b"] {
        assert_eq!(text(17, bad), other(bad), "{bad:?}");
    }
    assert_eq!(json(&text(17, "\\x00ff")), "\"\\\\x00ff\"");
}

#[test]
fn uuid_text() {
    let u = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
    assert_eq!(text(2950, u), Value::Uuid(u.into()));
    assert_eq!(json(&text(2950, u)), format!("\"{u}\""));
    for bad in [
        "",
        "a0eebc999c0b4ef8bb6d6bb9bd380a11",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1",
        "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    ] {
        assert_eq!(text(2950, bad), other(bad));
    }
}

#[test]
fn json_text_embedded() {
    let j = text(3802, r#"{"a": [1, 2.5, null], "é": "x\"y"}"#);
    assert_eq!(
        j,
        Value::Json(JsonText::new(r#"{"a": [1, 2.5, null], "é": "x\"y"}"#.into()).unwrap())
    );
    assert_eq!(json(&j), r#"{"a": [1, 2.5, null], "é": "x\"y"}"#);
    // serde_json trims the white space around a raw value.
    assert_eq!(json(&text(114, "  [1,2] ")), "[1,2]");
    assert_eq!(json(&text(114, "\"s\"")), "\"s\"");
    assert_eq!(text(114, "{bad"), other("{bad"));
    assert_eq!(text(3802, ""), other(""));
}

// ---- temporal, text format ----

#[test]
fn date_text() {
    let d = |s: &str| Value::Date(s.into());
    assert_eq!(text(1082, "2026-11-22"), d("2026-11-22"));
    assert_eq!(text(1082, "0044-03-15 BC"), d("-0043-03-15"));
    assert_eq!(text(1082, "infinity"), d("infinity"));
    assert_eq!(text(1082, "-infinity"), d("-infinity"));
    assert_eq!(text(1082, "5874897-12-31"), d("+5874897-12-31"));
    for bad in [
        "",
        "2026-1-22",
        "2026-13-01",
        "2026-11-32",
        "26-11-22",
        "2026-11-22 AD",
        "2026/11/22",
        "Infinity",
        // No year 0 in the server's numbering, and no sign either.
        "0000-01-01",
        "-0043-03-15",
        "+10000-01-01",
    ] {
        assert_eq!(text(1082, bad), other(bad), "{bad:?}");
    }
    assert_eq!(json(&text(1082, "2026-11-22")), "\"2026-11-22\"");
}

#[test]
fn time_text() {
    let tm = |s: &str| Value::Time(s.into());
    assert_eq!(text(1083, "03:22:01"), tm("03:22:01"));
    assert_eq!(text(1083, "03:22:01.5"), tm("03:22:01.5"));
    assert_eq!(text(1083, "23:59:59.999999"), tm("23:59:59.999999"));
    assert_eq!(text(1083, "24:00:00"), tm("24:00:00"));
    for bad in [
        "",
        "3:22:01",
        "03:22",
        "03:60:00",
        "25:00:00",
        "03:22:01.",
        "03:22:01+00",
    ] {
        assert_eq!(text(1083, bad), other(bad), "{bad:?}");
    }
}

#[test]
fn timetz_text_offsets_as_hh_mm() {
    let tz = |s: &str| Value::TimeTz(s.into());
    assert_eq!(text(1266, "03:22:01.5+05:30"), tz("03:22:01.5+05:30"));
    assert_eq!(text(1266, "03:22:01-08"), tz("03:22:01-08:00"));
    assert_eq!(text(1266, "12:00:00+00"), tz("12:00:00+00:00"));
    assert_eq!(text(1266, "00:00:00+05:30:15"), tz("00:00:00+05:30:15"));
    assert_eq!(text(1266, "24:00:00-15:59"), tz("24:00:00-15:59"));
    for bad in [
        "03:22:01",
        "03:22:01+5",
        "03:22:01 +05",
        "03:22:01+05:3",
        "03:22:01Z",
    ] {
        assert_eq!(text(1266, bad), other(bad), "{bad:?}");
    }
}

#[test]
fn timestamp_text() {
    let ts = |s: &str| Value::Timestamp(s.into());
    assert_eq!(
        text(1114, "2026-11-22 03:22:01.5"),
        ts("2026-11-22T03:22:01.5")
    );
    assert_eq!(text(1114, "2026-11-22 03:22:01"), ts("2026-11-22T03:22:01"));
    for frac in ["1", "12", "123", "1234", "12345", "123456"] {
        assert_eq!(
            text(1114, &format!("2026-11-22 03:22:01.{frac}")),
            ts(&format!("2026-11-22T03:22:01.{frac}"))
        );
    }
    assert_eq!(
        text(1114, "0044-03-15 03:00:00 BC"),
        ts("-0043-03-15T03:00:00")
    );
    assert_eq!(
        text(1114, "10000-01-01 00:00:00"),
        ts("+10000-01-01T00:00:00")
    );
    assert_eq!(text(1114, "infinity"), ts("infinity"));
    assert_eq!(text(1114, "-infinity"), ts("-infinity"));
    for bad in [
        "",
        "2026-11-22",
        "2026-11-22T03:22:01",
        "2026-11-22 03:22:01+00",
        "2026-11-22 03:22:01 AD",
        "2026-11-22  03:22:01",
        "2026-11-22 03:22:01.",
    ] {
        assert_eq!(text(1114, bad), other(bad), "{bad:?}");
    }
}

#[test]
fn timestamptz_text_is_utc_with_z() {
    let tz = |s: &str| Value::TimestampTz(s.into());
    assert_eq!(
        text(1184, "2026-11-22 03:22:01.123456+00"),
        tz("2026-11-22T03:22:01.123456Z")
    );
    assert_eq!(
        json(&text(1184, "2026-11-22 03:22:01.123456+00")),
        "\"2026-11-22T03:22:01.123456Z\""
    );
    assert_eq!(
        text(1184, "2026-11-22 03:22:01+00"),
        tz("2026-11-22T03:22:01Z")
    );
    for frac in ["1", "12", "123", "1234", "12345", "123456"] {
        assert_eq!(
            text(1184, &format!("2026-11-22 03:22:01.{frac}+00")),
            tz(&format!("2026-11-22T03:22:01.{frac}Z"))
        );
    }
    assert_eq!(
        text(1184, "0044-03-15 03:00:00+00 BC"),
        tz("-0043-03-15T03:00:00Z")
    );
    assert_eq!(text(1184, "infinity"), tz("infinity"));
    assert_eq!(text(1184, "-infinity"), tz("-infinity"));
    // Other offsets (another TimeZone setting) are converted to UTC.
    assert_eq!(
        text(1184, "2026-11-22 03:22:01.5+05:30"),
        tz("2026-11-21T21:52:01.5Z")
    );
    assert_eq!(
        text(1184, "2026-12-31 20:00:00-08"),
        tz("2027-01-01T04:00:00Z")
    );
    assert_eq!(
        text(1184, "2024-03-01 00:00:00+01"),
        tz("2024-02-29T23:00:00Z")
    );
    assert_eq!(
        text(1184, "0001-01-01 00:30:00+01 BC"),
        tz("-0001-12-31T23:30:00Z")
    );
    assert_eq!(
        text(1184, "0001-12-31 23:30:00-01 BC"),
        tz("0001-01-01T00:30:00Z")
    );
    for bad in [
        "2026-11-22 03:22:01",
        "2026-11-22 03:22:01Z",
        "2026-11-22 03:22:01+0",
        "2026-11-22 03:22:01+00 AD",
        "2026-11-22 03:22:01.+00",
    ] {
        assert_eq!(text(1184, bad), other(bad), "{bad:?}");
    }
}

#[test]
fn interval_text_as_is() {
    for s in [
        "1 year 2 mons 3 days 04:05:06.5",
        "00:00:00",
        "-1 days +02:00:00",
    ] {
        assert_eq!(text(1186, s), Value::Interval(s.into()));
    }
    assert_eq!(text(1186, ""), other(""));
}

// ---- arrays, text format ----

#[test]
fn int_arrays() {
    let i = Value::Int;
    assert_eq!(text(1007, "{1,2,3}"), arr(vec![i(1), i(2), i(3)]));
    assert_eq!(text(1007, "{}"), arr(vec![]));
    assert_eq!(
        text(1016, "{NULL,-9223372036854775808}"),
        arr(vec![Value::Null, i(i64::MIN)])
    );
    assert_eq!(
        text(1007, "{1,null,NuLl}"),
        arr(vec![i(1), Value::Null, Value::Null])
    );
    assert_eq!(
        text(1007, "{{1,2},{3,4}}"),
        arr(vec![arr(vec![i(1), i(2)]), arr(vec![i(3), i(4)])])
    );
    assert_eq!(
        text(1007, "{{{1},{2}},{{3},{4}}}"),
        arr(vec![
            arr(vec![arr(vec![i(1)]), arr(vec![i(2)])]),
            arr(vec![arr(vec![i(3)]), arr(vec![i(4)])]),
        ])
    );
    // 8.15.6: dimension decoration when a lower bound is not 1.
    assert_eq!(text(1007, "[0:1]={1,2}"), arr(vec![i(1), i(2)]));
    assert_eq!(
        text(1007, "[-2:-1][1:2]={{1,2},{3,4}}"),
        arr(vec![arr(vec![i(1), i(2)]), arr(vec![i(3), i(4)])])
    );
    // White space around elements is ignored on input.
    assert_eq!(text(1007, " { 1 , 2 } "), arr(vec![i(1), i(2)]));
    assert_eq!(json(&text(1007, "{{1,NULL},{3,4}}")), "[[1,null],[3,4]]");
    // An element that is not its type is Other inside the array.
    assert_eq!(text(1005, "{1,x}"), arr(vec![i(1), other("x")]));
}

#[test]
fn text_arrays_quoting_and_escapes() {
    let got = text(
        1009,
        r#"{"a b","NULL",NULL,"q\"u\\o",""," x ","é{}",plain,ünï}"#,
    );
    assert_eq!(
        got,
        arr(vec![
            t("a b"),
            t("NULL"),
            Value::Null,
            t("q\"u\\o"),
            t(""),
            t(" x "),
            t("é{}"),
            t("plain"),
            t("ünï"),
        ])
    );
    assert_eq!(
        json(&got),
        r#"["a b","NULL",null,"q\"u\\o",""," x ","é{}","plain","ünï"]"#
    );
    // Backslash escapes in unquoted elements, and an escaped trailing space is kept.
    assert_eq!(text(1009, r"{a\,b,c\ }"), arr(vec![t("a,b"), t("c ")]));
    assert_eq!(text(1009, r#"{"\é"}"#), arr(vec![t("é")]));
    assert_eq!(text(1015, "{x}"), arr(vec![t("x")]));
    assert_eq!(text(1014, r#"{"a  "}"#), arr(vec![t("a  ")]));
    assert_eq!(
        text(1009, r#"{{"{",b},{c,"}"}}"#),
        arr(vec![arr(vec![t("{"), t("b")]), arr(vec![t("c"), t("}")])])
    );
}

#[test]
fn arrays_of_every_builtin_element() {
    assert_eq!(
        text(1000, "{t,f,NULL}"),
        arr(vec![Value::Bool(true), Value::Bool(false), Value::Null])
    );
    assert_eq!(text(1028, "{26}"), arr(vec![Value::Int(26)]));
    assert_eq!(text(1003, "{pg_class}"), arr(vec![t("pg_class")]));
    assert_eq!(text(1002, "{a}"), arr(vec![t("a")]));
    let floats = text(1022, "{1.5,NaN,-0,Infinity,-Infinity}");
    assert_eq!(json(&floats), r#"[1.5,"NaN",-0.0,"Infinity","-Infinity"]"#);
    assert_eq!(text(1021, "{1.1}"), arr(vec![Value::Float(1.1)]));
    assert_eq!(
        text(1231, "{12.50,NaN,-Infinity}"),
        arr(vec![
            Value::Numeric("12.50".into()),
            Value::Numeric("NaN".into()),
            Value::Numeric("-Infinity".into())
        ])
    );
    assert_eq!(
        text(1001, r#"{"\\x01ff",NULL}"#),
        arr(vec![Value::Bytea(vec![1, 0xff]), Value::Null])
    );
    let u = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
    assert_eq!(
        text(2951, &format!("{{{u}}}")),
        arr(vec![Value::Uuid(u.into())])
    );
    assert_eq!(
        json(&text(199, r#"{"{\"a\":1}",NULL}"#)),
        r#"[{"a":1},null]"#
    );
    assert_eq!(
        json(&text(3807, r#"{"[1, 2]","\"s\""}"#)),
        r#"[[1, 2],"s"]"#
    );
    assert_eq!(
        text(1182, r#"{2026-11-22,"0044-03-15 BC",infinity}"#),
        arr(vec![
            Value::Date("2026-11-22".into()),
            Value::Date("-0043-03-15".into()),
            Value::Date("infinity".into())
        ])
    );
    assert_eq!(
        text(1183, "{03:22:01.5}"),
        arr(vec![Value::Time("03:22:01.5".into())])
    );
    assert_eq!(
        text(1270, "{12:00:00+05}"),
        arr(vec![Value::TimeTz("12:00:00+05:00".into())])
    );
    assert_eq!(
        text(1115, r#"{"2026-01-01 00:00:00",infinity}"#),
        arr(vec![
            Value::Timestamp("2026-01-01T00:00:00".into()),
            Value::Timestamp("infinity".into())
        ])
    );
    assert_eq!(
        json(&text(1185, r#"{"2020-01-01 00:00:00+00"}"#)),
        r#"["2020-01-01T00:00:00Z"]"#
    );
    assert_eq!(
        text(1187, r#"{"1 day",-00:00:01}"#),
        arr(vec![
            Value::Interval("1 day".into()),
            Value::Interval("-00:00:01".into())
        ])
    );
    assert_eq!(text(1041, "{1.2.3.4}"), arr(vec![t("1.2.3.4")]));
    assert_eq!(text(651, "{10.0.0.0/8}"), arr(vec![t("10.0.0.0/8")]));
    assert_eq!(
        text(1040, "{08:00:2b:01:02:03}"),
        arr(vec![t("08:00:2b:01:02:03")])
    );
    assert_eq!(
        text(775, "{08:00:2b:01:02:03:04:05}"),
        arr(vec![t("08:00:2b:01:02:03:04:05")])
    );
    assert_eq!(text(791, "{$1.00}"), arr(vec![t("$1.00")]));
    assert_eq!(text(143, "{<a/>}"), arr(vec![t("<a/>")]));
}

#[test]
fn box_arrays_use_semicolons() {
    assert_eq!(
        text(1020, "{(3,4),(1,2);(1,1),(0,0)}"),
        arr(vec![other("(3,4),(1,2)"), other("(1,1),(0,0)")])
    );
}

#[test]
fn malformed_arrays_are_other() {
    for bad in [
        "",
        "{",
        "}",
        "{1,2",
        "{1,,2}",
        "{,}",
        "{1}}",
        "{1}x",
        "{\"a}",
        "{a\"b}",
        "{1,{2}",
        "[0:1]{1,2}",
        "[0:1={1}",
        "[a:1]={1}",
        "1,2",
        "{a\\}",
        "{{{{{{{1}}}}}}}",
    ] {
        assert_eq!(text(1007, bad), other(bad), "{bad:?}");
    }
    // Six dimensions is the server's maximum and is fine.
    assert_eq!(json(&text(1007, "{{{{{{1}}}}}}")), "[[[[[[1]]]]]]");
}

// ---- registry types ----

#[test]
fn registry_domains_enums_arrays() {
    let mut r = TypeRegistry::new();
    r.insert(20_000, TypeKind::Domain { base: 23 });
    r.insert(20_001, TypeKind::Domain { base: 20_000 });
    r.insert(20_002, TypeKind::Enum);
    r.insert(
        20_003,
        TypeKind::Array {
            elem: 20_002,
            delim: b',',
        },
    );
    r.insert(
        20_004,
        TypeKind::Array {
            elem: 20_001,
            delim: b',',
        },
    );
    r.insert(20_005, TypeKind::Other);
    r.insert(20_006, TypeKind::Domain { base: 1007 });
    r.insert(
        20_007,
        TypeKind::Array {
            elem: 20_006,
            delim: b',',
        },
    );
    assert_eq!(r.parse_text(20_000, "5"), Value::Int(5));
    assert_eq!(r.parse_text(20_001, "6"), Value::Int(6));
    assert_eq!(r.parse_text(20_001, "x"), other("x"));
    assert_eq!(r.parse_text(20_002, "happy"), t("happy"));
    assert_eq!(
        r.parse_text(20_003, "{happy,NULL,\"so sad\"}"),
        arr(vec![t("happy"), Value::Null, t("so sad")])
    );
    assert_eq!(
        r.parse_text(20_004, "{1,2}"),
        arr(vec![Value::Int(1), Value::Int(2)])
    );
    assert_eq!(r.parse_text(20_005, "(1,2)"), other("(1,2)"));
    assert_eq!(r.parse_text(20_006, "{1}"), arr(vec![Value::Int(1)]));
    // An array of a domain over an array: elements are quoted arrays.
    assert_eq!(
        r.parse_text(20_007, r#"{"{1,2}","{3}"}"#),
        arr(vec![
            arr(vec![Value::Int(1), Value::Int(2)]),
            arr(vec![Value::Int(3)])
        ])
    );
    assert_eq!(r.get(20_002), Some(&TypeKind::Enum));
    assert_eq!(r.get(1), None);
}

#[test]
fn registry_cycles_and_deep_chains_give_other() {
    let mut r = TypeRegistry::new();
    r.insert(30_000, TypeKind::Domain { base: 30_001 });
    r.insert(30_001, TypeKind::Domain { base: 30_000 });
    assert_eq!(r.parse_text(30_000, "1"), other("1"));
    assert_eq!(r.parse_binary(30_000, &[1]), other("\\x01"));
    // A chain longer than MAX_DEPTH.
    for i in 0..40 {
        r.insert(31_000 + i, TypeKind::Domain { base: 31_001 + i });
    }
    r.insert(31_040, TypeKind::Domain { base: 23 });
    assert_eq!(r.parse_text(31_000, "1"), other("1"));
    assert_eq!(r.parse_text(31_030, "1"), Value::Int(1));
    // An array whose element is itself: nesting stops at MAX_DEPTH, never overflows the stack.
    r.insert(
        32_000,
        TypeKind::Array {
            elem: 32_000,
            delim: b',',
        },
    );
    let deep = format!("{}{}", "{\"".repeat(3), "\"}".repeat(3));
    assert!(matches!(
        r.parse_text(32_000, &deep),
        Value::Array(_) | Value::Other(_)
    ));
    assert!(matches!(r.parse_text(32_000, "{1}"), Value::Array(_)));
}

#[test]
fn insert_row_reads_type_query_rows() {
    let mut r = TypeRegistry::new();
    r.insert_row(40_000, "d", 25, 0, ",");
    r.insert_row(40_001, "e", 0, 0, ",");
    r.insert_row(40_002, "b", 0, 40_001, ",");
    r.insert_row(40_003, "c", 0, 0, ",");
    r.insert_row(40_004, "b", 0, 40_003, ";");
    r.insert_row(40_005, "b", 0, 40_003, "??");
    r.insert_row(40_006, "d", 0, 0, ",");
    assert_eq!(r.get(40_000), Some(&TypeKind::Domain { base: 25 }));
    assert_eq!(r.get(40_001), Some(&TypeKind::Enum));
    assert_eq!(
        r.get(40_002),
        Some(&TypeKind::Array {
            elem: 40_001,
            delim: b','
        })
    );
    assert_eq!(r.get(40_003), Some(&TypeKind::Other));
    assert_eq!(
        r.get(40_004),
        Some(&TypeKind::Array {
            elem: 40_003,
            delim: b';'
        })
    );
    assert_eq!(
        r.get(40_005),
        Some(&TypeKind::Array {
            elem: 40_003,
            delim: b','
        })
    );
    assert_eq!(r.get(40_006), Some(&TypeKind::Other));
    assert_eq!(r.parse_text(40_000, "x"), t("x"));
}

#[test]
fn builtin_oids_win_over_the_registry() {
    let mut r = TypeRegistry::new();
    r.insert(23, TypeKind::Enum);
    assert_eq!(r.parse_text(23, "1"), Value::Int(1));
}

// ---- binary format ----

#[test]
fn binary_scalars_round_trip() {
    assert_eq!(
        bin(16, &buf(|b| pt::bool_to_sql(true, b))),
        Value::Bool(true)
    );
    assert_eq!(
        bin(16, &buf(|b| pt::bool_to_sql(false, b))),
        Value::Bool(false)
    );
    assert_eq!(bin(21, &buf(|b| pt::int2_to_sql(-7, b))), Value::Int(-7));
    assert_eq!(
        bin(23, &buf(|b| pt::int4_to_sql(i32::MIN, b))),
        Value::Int(i64::from(i32::MIN))
    );
    assert_eq!(
        bin(20, &buf(|b| pt::int8_to_sql(i64::MAX, b))),
        Value::Int(i64::MAX)
    );
    assert_eq!(
        bin(26, &buf(|b| pt::oid_to_sql(u32::MAX, b))),
        Value::Int(4_294_967_295)
    );
    assert_eq!(
        bin(701, &buf(|b| pt::float8_to_sql(1.5, b))),
        Value::Float(1.5)
    );
    assert_eq!(
        bin(700, &buf(|b| pt::float4_to_sql(1.1, b))),
        Value::Float(1.1)
    );
    assert_eq!(
        json(&bin(700, &buf(|b| pt::float4_to_sql(f32::NAN, b)))),
        "\"NaN\""
    );
    assert_eq!(
        bin(701, &buf(|b| pt::float8_to_sql(f64::NEG_INFINITY, b))),
        Value::Float(f64::NEG_INFINITY)
    );
    for oid in [25, 1043, 1042, 19, 142] {
        assert_eq!(
            bin(oid, &buf(|b| pt::text_to_sql("héllo ", b))),
            t("héllo ")
        );
    }
    assert_eq!(bin(18, &buf(|b| pt::char_to_sql(b'a' as i8, b))), t("a"));
    assert_eq!(bin(18, &[0xe9]), t("\\351"));
    assert_eq!(bin(18, &[0]), t(""));
    assert_eq!(
        bin(17, &buf(|b| pt::bytea_to_sql(&[0, 255], b))),
        Value::Bytea(vec![0, 255])
    );
    let u = [
        0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a,
        0x11,
    ];
    assert_eq!(
        bin(2950, &buf(|b| pt::uuid_to_sql(u, b))),
        Value::Uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into())
    );
    assert_eq!(json(&bin(114, br#"{"a": 1}"#)), r#"{"a": 1}"#);
    assert_eq!(json(&bin(3802, b"\x01{\"a\": 1}")), r#"{"a": 1}"#);
    assert_eq!(bin(3802, b"\x02{}"), other("\\x027b7d"));
    assert_eq!(
        bin(829, &buf(|b| pt::macaddr_to_sql([8, 0, 0x2b, 1, 2, 3], b))),
        t("08:00:2b:01:02:03")
    );
    assert_eq!(
        bin(774, &[8, 0, 0x2b, 1, 2, 3, 4, 5]),
        t("08:00:2b:01:02:03:04:05")
    );
    assert_eq!(
        bin(829, &[8, 0, 0x2b, 1, 2, 3, 4, 5]),
        other("\\x08002b0102030405")
    );
}

#[test]
fn binary_inet_matches_server_text() {
    let cases = [
        (
            "\\x0380001000000000000000000000ffff01020304",
            "::ffff:1.2.3.4",
        ),
        ("\\x0380001000000000000000000000000001020304", "::1.2.3.4"),
        (
            "\\x0340001020010db8000000000000000000000001",
            "2001:db8::1/64",
        ),
        ("\\x0380001000010000000000010000000000000001", "1:0:0:1::1"),
        (
            "\\x0380001000010000000100000001000000010000",
            "1:0:1:0:1:0:1:0",
        ),
        ("\\x0380001000000000000000000000000000000000", "::"),
        ("\\x0380001000000000000000000000000000000001", "::1"),
        ("\\x02180004c0a80001", "192.168.0.1/24"),
        ("\\x022000040a010203", "10.1.2.3"),
        (
            "\\x03800010fe800000000000000001000000000000",
            "fe80::1:0:0:0",
        ),
        (
            "\\x0380001000010002000300040005000600070000",
            "1:2:3:4:5:6:7:0",
        ),
    ];
    for (b, s) in cases {
        assert_eq!(bin(869, &hx(b)), t(s), "{s}");
    }
    // cidr_send output always shows the mask.
    let cidr = [
        ("\\x020801040a000000", "10.0.0.0/8"),
        (
            "\\x0320011020010db8000000000000000000000000",
            "2001:db8::/32",
        ),
        ("\\x0220010401020304", "1.2.3.4/32"),
    ];
    for (b, s) in cidr {
        assert_eq!(bin(650, &hx(b)), t(s), "{s}");
    }
    assert_eq!(
        bin(869, &hx("\\x02210004c0a80001")),
        other("\\x02210004c0a80001")
    );
    assert_eq!(
        bin(869, &hx("\\x02200010c0a80001")),
        other("\\x02200010c0a80001")
    );
    assert_eq!(
        bin(790, &hx("\\x0000000000000064")),
        other("\\x0000000000000064")
    );
}

/// Years in ISO-8601's expanded numbering at the edges: 1 BC is year 0, N BC is year 1 - N,
/// years after 9999 carry a `+`. Each row: the server's text (psql, pinned settings), the
/// send-format value (days or µs since 2000-01-01, from `date - '2000-01-01'` and
/// `timestamp_send`), and what walwatch emits. PostgreSQL's first date and timestamp are
/// 4714-11-24 BC (Julian day 0; MIN_TIMESTAMP in src/include/datatype/timestamp.h), its last
/// timestamp 294276-12-31 23:59:59.999999 (END_TIMESTAMP - 1), its last date 5874897-12-31.
#[test]
fn temporal_years_are_iso_8601_expanded_years() {
    let dates: [(&str, i32, &str); 10] = [
        ("4714-11-24 BC", -2_451_545, "-4713-11-24"),
        ("4713-01-01 BC", -2_451_507, "-4712-01-01"),
        ("0002-12-31 BC", -730_486, "-0001-12-31"),
        ("0001-01-01 BC", -730_485, "0000-01-01"),
        ("0001-12-31 BC", -730_120, "0000-12-31"),
        ("0001-01-01", -730_119, "0001-01-01"),
        ("9999-12-31", 2_921_939, "9999-12-31"),
        ("10000-01-01", 2_921_940, "+10000-01-01"),
        ("294276-12-31", 106_751_982, "+294276-12-31"),
        ("5874897-12-31", 2_145_031_948, "+5874897-12-31"),
    ];
    for (server, days, want) in dates {
        assert_eq!(
            text(1082, server),
            Value::Date(want.into()),
            "text {server}"
        );
        assert_eq!(
            bin(1082, &days.to_be_bytes()),
            Value::Date(want.into()),
            "binary {server} ({days} days)"
        );
        assert_eq!(json(&text(1082, server)), format!("\"{want}\""));
    }
    let stamps: [(&str, i64, &str); 8] = [
        (
            "4714-11-24 00:00:00 BC",
            -211_813_488_000_000_000,
            "-4713-11-24T00:00:00",
        ),
        (
            "4713-12-31 23:59:59.999999 BC",
            -211_778_582_400_000_001,
            "-4712-12-31T23:59:59.999999",
        ),
        (
            "0001-12-31 23:59:59.999999 BC",
            -63_082_281_600_000_001,
            "0000-12-31T23:59:59.999999",
        ),
        (
            "0001-01-01 00:00:00",
            -63_082_281_600_000_000,
            "0001-01-01T00:00:00",
        ),
        (
            "9999-12-31 23:59:59.999999",
            252_455_615_999_999_999,
            "9999-12-31T23:59:59.999999",
        ),
        (
            "10000-01-01 00:00:00",
            252_455_616_000_000_000,
            "+10000-01-01T00:00:00",
        ),
        (
            "294276-12-31 23:59:59.999999",
            9_223_371_331_199_999_999,
            "+294276-12-31T23:59:59.999999",
        ),
        (
            "2026-11-22 03:22:01.5",
            848_632_921_500_000,
            "2026-11-22T03:22:01.5",
        ),
    ];
    for (server, us, want) in stamps {
        assert_eq!(
            text(1114, server),
            Value::Timestamp(want.into()),
            "text {server}"
        );
        assert_eq!(
            bin(1114, &us.to_be_bytes()),
            Value::Timestamp(want.into()),
            "binary {server}"
        );
        // timestamptz prints the offset before the era: `... 00:00:00+00 BC`.
        let tz_server = match server.strip_suffix(" BC") {
            Some(body) => format!("{body}+00 BC"),
            None => format!("{server}+00"),
        };
        let tz_want = format!("{want}Z");
        assert_eq!(
            text(1184, &tz_server),
            Value::TimestampTz(tz_want.clone()),
            "text {tz_server}"
        );
        assert_eq!(
            bin(1184, &us.to_be_bytes()),
            Value::TimestampTz(tz_want.clone()),
            "binary {tz_server}"
        );
        assert_eq!(json(&text(1184, &tz_server)), format!("\"{tz_want}\""));
    }
    // The infinities stay the words, in both formats.
    for (oid, b) in [
        (1082, &i32::MAX.to_be_bytes()[..]),
        (1114, &i64::MAX.to_be_bytes()[..]),
        (1184, &i64::MAX.to_be_bytes()[..]),
    ] {
        assert_eq!(json(&text(oid, "infinity")), "\"infinity\"");
        assert_eq!(json(&text(oid, "-infinity")), "\"-infinity\"");
        assert_eq!(json(&bin(oid, b)), "\"infinity\"");
    }
    // An offset that moves a BC timestamptz across the year boundary, and one into year 0.
    assert_eq!(
        text(1184, "0001-01-01 00:30:00+01 BC"),
        Value::TimestampTz("-0001-12-31T23:30:00Z".into())
    );
    assert_eq!(
        text(1184, "0001-01-01 00:30:00+01"),
        Value::TimestampTz("0000-12-31T23:30:00Z".into())
    );
}

#[test]
fn binary_temporal_matches_server_text() {
    // (send-format bytes, the text the server printed for the same value)
    let date = [
        ("\\x0000265e", "2026-11-22"),
        ("\\xfff49d7b", "-0043-03-15"),
        ("\\x80000000", "-infinity"),
        ("\\x7fffffff", "infinity"),
        ("\\xfff4dbf9", "0001-01-01"),
    ];
    for (b, s) in date {
        assert_eq!(bin(1082, &hx(b)), Value::Date(s.into()), "{s}");
    }
    let tstz = [
        ("\\x000303d3bfceea80", "2026-11-22T03:22:01.123456Z"),
        ("\\x7fffffffffffffff", "infinity"),
        ("\\x8000000000000000", "-infinity"),
        ("\\xff1af9e170160c00", "-0043-03-15T03:00:00Z"),
        ("\\xfffffffffffe7960", "1999-12-31T23:59:59.9Z"),
        ("\\x0380e70b913b8000", "+10000-01-01T00:00:00Z"),
    ];
    for (b, s) in tstz {
        assert_eq!(bin(1184, &hx(b)), Value::TimestampTz(s.into()), "{s}");
        let naive = s.replace('Z', "");
        assert_eq!(bin(1114, &hx(b)), Value::Timestamp(naive), "{s}");
    }
    // Round trips through postgres-protocol's encoders, fractions of 1..6 digits.
    for (us, s) in [
        (0, "2000-01-01T00:00:00Z"),
        (500_000, "2000-01-01T00:00:00.5Z"),
        (120_000, "2000-01-01T00:00:00.12Z"),
        (123_000, "2000-01-01T00:00:00.123Z"),
        (123_400, "2000-01-01T00:00:00.1234Z"),
        (123_450, "2000-01-01T00:00:00.12345Z"),
        (1, "2000-01-01T00:00:00.000001Z"),
        (-1, "1999-12-31T23:59:59.999999Z"),
    ] {
        assert_eq!(
            bin(1184, &buf(|b| pt::timestamp_to_sql(us, b))),
            Value::TimestampTz(s.into())
        );
    }
    // The same values through the text path give the same strings.
    assert_eq!(
        text(1184, "2026-11-22 03:22:01.123456+00"),
        bin(1184, &hx("\\x000303d3bfceea80"))
    );
    assert_eq!(
        bin(1082, &buf(|b| pt::date_to_sql(0, b))),
        Value::Date("2000-01-01".into())
    );
    let time = [
        (0, "00:00:00"),
        (12_121_500_000, "03:22:01.5"),
        (86_400_000_000, "24:00:00"),
        (86_399_999_999, "23:59:59.999999"),
    ];
    for (us, s) in time {
        assert_eq!(
            bin(1083, &buf(|b| pt::time_to_sql(us, b))),
            Value::Time(s.into())
        );
    }
    assert_eq!(
        bin(1083, &buf(|b| pt::time_to_sql(-1, b))),
        other("\\xffffffffffffffff")
    );
    let timetz = [
        ("\\x00000002d27f6960ffffb2a8", "03:22:01.5+05:30"),
        ("\\x00000002d277c84000007080", "03:22:01-08:00"),
        ("\\x0000000000000000ffffb299", "00:00:00+05:30:15"),
        ("\\x000000141dd7600000000000", "24:00:00+00:00"),
    ];
    for (b, s) in timetz {
        assert_eq!(bin(1266, &hx(b)), Value::TimeTz(s.into()), "{s}");
    }
}

#[test]
fn binary_interval_matches_server_text() {
    let cases = [
        (
            "\\x000000036c9361a0000000030000000e",
            "1 year 2 mons 3 days 04:05:06.5",
        ),
        ("\\x00000000000000000000000000000000", "00:00:00"),
        ("\\x00000001ad274800ffffffff00000000", "-1 days +02:00:00"),
        ("\\x000000000000000000000000fffffff2", "-1 years -2 mons"),
        (
            "\\xfffffffffff0bdbffffffffd00000001",
            "1 mon -3 days -00:00:01.000001",
        ),
        ("\\x00000053d1ac10000000000000000000", "100:00:00"),
        ("\\x00000000000000000000000100000000", "1 day"),
        ("\\xfffffffffff85ee00000000000000000", "-00:00:00.5"),
        ("\\x0000000000000000000000000000000b", "11 mons"),
    ];
    for (b, s) in cases {
        assert_eq!(bin(1186, &hx(b)), Value::Interval(s.into()), "{s}");
    }
}

#[test]
fn binary_numeric_matches_server_text() {
    let cases = [
        ("\\x0002000000000002000c1388", "12.50"),
        ("\\x0000000000000000", "0"),
        ("\\x0001fffe4000000503e8", "-0.00001"),
        (
            "\\x000600040000000404d2162e23340d801ed204d2",
            "12345678901234567890.1234",
        ),
        ("\\x00000000c0000000", "NaN"),
        ("\\x00000000f0000020", "-Infinity"),
        ("\\x00000000d0000020", "Infinity"),
        ("\\x0001ffff0000000103e8", "0.1"),
        ("\\x0002000040000004007b11d0", "-123.4560"),
        ("\\x00010002000000000001", "100000000"),
        ("\\x0001fffb000000140001", "0.00000000000000000001"),
        ("\\x0002000000000004270f270f", "9999.9999"),
    ];
    for (b, s) in cases {
        let v = bin(1700, &hx(b));
        assert_eq!(v, Value::Numeric(s.into()), "{s}");
        // The text path agrees.
        assert_eq!(text(1700, s), v);
    }
    // Bad digit (10000), bad sign, length mismatch.
    for b in [
        "\\x00010000000000002710",
        "\\x00010000123400000001",
        "\\x000200000000000000",
        "\\x0001000000004000",
    ] {
        assert!(matches!(bin(1700, &hx(b)), Value::Other(_)), "{b}");
    }
    assert!(matches!(
        bin(1700, &hx("\\x000100000000000027100000")),
        Value::Other(_)
    ));
}

#[test]
fn binary_arrays() {
    // array_send('{{1,NULL},{3,4}}'::int[]), '{}'::int[], '[0:1]={a,b}'::text[]
    assert_eq!(
        bin(
            1007,
            &hx(
                "\\x000000020000000100000017000000020000000100000002000000010000000400000001ffffffff00000004000000030000000400000004"
            )
        ),
        arr(vec![
            arr(vec![Value::Int(1), Value::Null]),
            arr(vec![Value::Int(3), Value::Int(4)])
        ])
    );
    assert_eq!(bin(1007, &hx("\\x000000000000000000000017")), arr(vec![]));
    assert_eq!(
        bin(
            1009,
            &hx("\\x000000010000000000000019000000020000000000000001610000000162")
        ),
        arr(vec![t("a"), t("b")])
    );
    let mut r = TypeRegistry::new();
    r.insert(
        50_000,
        TypeKind::Array {
            elem: 50_001,
            delim: b',',
        },
    );
    r.insert(50_001, TypeKind::Enum);
    // A user array's elements are decoded by the element OID the payload names.
    assert_eq!(
        r.parse_binary(
            50_000,
            &hx("\\x00000001000000000000c3510000000100000001000000026f6b")
        ),
        arr(vec![t("ok")])
    );
}

#[test]
fn binary_garbage_never_panics() {
    let r = TypeRegistry::new();
    let oids = [
        16, 17, 18, 19, 20, 21, 23, 25, 26, 114, 142, 650, 700, 701, 774, 790, 829, 869, 1042,
        1043, 1082, 1083, 1114, 1184, 1186, 1266, 1700, 2950, 3802, 1000, 1007, 1009, 1231, 1185,
        99_999,
    ];
    let mut seed = 0x1234_5678_u32;
    for len in 0..40 {
        for _ in 0..50 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    seed as u8
                })
                .collect();
            for oid in oids {
                let _ = r.parse_binary(oid, &bytes);
                if let Ok(s) = std::str::from_utf8(&bytes) {
                    let _ = r.parse_text(oid, s);
                }
            }
        }
    }
    // Short input is Other, as hex.
    assert_eq!(bin(20, &[1, 2]), other("\\x0102"));
    assert_eq!(bin(1184, &[]), other("\\x"));
    assert_eq!(bin(99_999, &[0xab]), other("\\xab"));
    // A huge claimed element count with no data behind it.
    assert!(matches!(
        bin(1007, &hx("\\x00000001000000000000001700ffffff00000001")),
        Value::Other(_)
    ));
}

#[test]
fn text_garbage_never_panics() {
    let r = TypeRegistry::new();
    let pieces = [
        "{",
        "}",
        "\"",
        "\\",
        ",",
        "NULL",
        "1",
        "-",
        ":",
        "[",
        "]",
        "=",
        " ",
        "é",
        ".",
        "+",
        "BC",
        "x",
        "0",
        "2026-11-22",
        "03:22:01",
        "+05",
        "infinity",
        ";",
    ];
    let mut seed = 0x9e37_79b9_u32;
    for _ in 0..20_000 {
        let mut s = String::new();
        for _ in 0..(seed % 12) {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            s.push_str(pieces[seed as usize % pieces.len()]);
        }
        for oid in [
            16, 17, 20, 700, 1700, 1082, 1083, 1266, 1114, 1184, 1007, 1009, 1020, 1185, 3807,
        ] {
            let _ = r.parse_text(oid, &s);
        }
    }
}

#[test]
fn column_kinds_resolve_domains_enums_and_arrays() {
    let mut r = TypeRegistry::new();
    r.insert(20_000, TypeKind::Domain { base: 1700 });
    r.insert(20_001, TypeKind::Domain { base: 20_000 });
    r.insert(20_002, TypeKind::Enum);
    r.insert(
        20_003,
        TypeKind::Array {
            elem: 20_002,
            delim: b',',
        },
    );
    r.insert(20_004, TypeKind::Other);
    assert_eq!(r.kind_of(21), ColumnKind::Int2);
    assert_eq!(r.kind_of(1184), ColumnKind::TimestampTz);
    assert_eq!(r.kind_of(1042), ColumnKind::Text);
    assert_eq!(r.kind_of(20_001), ColumnKind::Numeric);
    assert_eq!(r.kind_of(20_002), ColumnKind::Enum);
    assert_eq!(
        r.kind_of(20_003),
        ColumnKind::Array(Box::new(ColumnKind::Enum))
    );
    assert_eq!(
        r.kind_of(1007),
        ColumnKind::Array(Box::new(ColumnKind::Int4))
    );
    assert_eq!(r.kind_of(869), ColumnKind::Other);
    assert_eq!(r.kind_of(20_004), ColumnKind::Other);
    assert_eq!(r.kind_of(99_999), ColumnKind::Other);
}

#[test]
fn a_binary_array_with_a_zero_dimension_allocates_nothing() {
    // ndim 2, dims [2^31 - 1, 0]: zero elements, but nesting them would build 2^31 - 1 empty
    // arrays (16 GB of Values). The `values` fuzz target found the shape.
    let mut b = Vec::new();
    for v in [2i32, 0, 23, i32::MAX, 1, 0, 1] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    let started = std::time::Instant::now();
    let v = TypeRegistry::new().parse_binary(1007, &b);
    assert!(matches!(v, Value::Other(_)), "{v:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
}
