//! Subject and issuer names in every string type X.509 names use, against OpenSSL's
//! reading of the same bytes: generated names (random text in UTF8String,
//! PrintableString, IA5String, TeletexString, BMPString and UniversalString, single and
//! multi-valued RDNs, every character RFC 4514 escapes) are decoded to the same text
//! and the same RFC 4514 string (`openssl x509 -nameopt RFC2253`). A value that cannot
//! be decoded refuses the certificate; it is never dropped.

use proptest::prelude::*;
use zt_policy_core::parse_der;

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Utf8,
    Printable,
    Ia5,
    Teletex,
    Bmp,
    Universal,
}

#[derive(Debug, Clone)]
struct Attr {
    field: &'static str,
    kind: Kind,
    text: String,
}

fn oid(field: &str) -> Vec<u8> {
    let last = match field {
        "CN" => 3,
        "C" => 6,
        "L" => 7,
        "ST" => 8,
        "O" => 10,
        "OU" => 11,
        _ => unreachable!(),
    };
    tlv(0x06, &[0x55, 0x04, last])
}

fn encode(kind: Kind, text: &str) -> Vec<u8> {
    match kind {
        Kind::Utf8 => tlv(0x0c, text.as_bytes()),
        Kind::Printable => tlv(0x13, text.as_bytes()),
        Kind::Ia5 => tlv(0x16, text.as_bytes()),
        Kind::Teletex => tlv(
            0x14,
            &text.chars().map(|c| c as u32 as u8).collect::<Vec<_>>(),
        ),
        Kind::Bmp => tlv(
            0x1e,
            &text
                .encode_utf16()
                .flat_map(u16::to_be_bytes)
                .collect::<Vec<_>>(),
        ),
        Kind::Universal => tlv(
            0x1c,
            &text
                .chars()
                .flat_map(|c| (c as u32).to_be_bytes())
                .collect::<Vec<_>>(),
        ),
    }
}

fn name(rdns: &[Vec<Attr>]) -> Vec<u8> {
    seq(&rdns
        .iter()
        .map(|rdn| {
            let mut attrs: Vec<Vec<u8>> = rdn
                .iter()
                .map(|a| seq(&[oid(a.field), encode(a.kind, &a.text)]))
                .collect();
            attrs.sort(); // DER orders a SET OF by encoding
            tlv(0x31, &attrs.concat())
        })
        .collect::<Vec<_>>())
}

/// A certificate around `subject` (the signature is not checked by either reader).
fn certificate(subject: &[u8]) -> Vec<u8> {
    let ecdsa_sha256 = tlv(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]);
    let issuer = name(&[vec![Attr {
        field: "CN",
        kind: Kind::Utf8,
        text: "Test CA".into(),
    }]]);
    // P-256's generator as the public key: a valid point.
    let mut point = vec![0x00, 0x04];
    point.extend(
        (0..32)
            .map(|i| {
                u8::from_str_radix(
                    &"6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296"
                        [2 * i..2 * i + 2],
                    16,
                )
                .unwrap()
            })
            .chain((0..32).map(|i| {
                u8::from_str_radix(
                    &"4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5"
                        [2 * i..2 * i + 2],
                    16,
                )
                .unwrap()
            })),
    );
    let spki = seq(&[
        seq(&[
            tlv(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01]),
            tlv(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]),
        ]),
        tlv(0x03, &point),
    ]);
    let tbs = seq(&[
        tlv(0xa0, &tlv(0x02, &[2])),
        tlv(0x02, &[1]),
        seq(std::slice::from_ref(&ecdsa_sha256)),
        issuer,
        seq(&[tlv(0x17, b"260101000000Z"), tlv(0x17, b"270101000000Z")]),
        subject.to_vec(),
        spki,
    ]);
    seq(&[
        tbs,
        seq(&[ecdsa_sha256]),
        tlv(
            0x03,
            &[0x00, 0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01],
        ),
    ])
}

/// OpenSSL's RFC 4514 (2253) form of the subject, in UTF-8.
fn openssl_subject(der: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args([
            "x509",
            "-inform",
            "DER",
            "-noout",
            "-subject",
            "-nameopt",
            "RFC2253,-esc_msb",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openssl");
    child.stdin.take().unwrap().write_all(der).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("openssl printed UTF-8");
    text.trim_end_matches('\n')
        .strip_prefix("subject=")
        .expect("subject=")
        .to_owned()
}

/// OpenSSL reverses the attributes inside a multi-valued RDN too; Go (and so Caddy,
/// and the engine) keeps them in order. Splits at unescaped `,` and `+` to match. And
/// OpenSSL leaves a value that is just `#` unescaped, where RFC 4514 and Go escape it.
fn go_order(dn: &str) -> String {
    let mut rdns: Vec<Vec<String>> = vec![vec![String::new()]];
    let mut escaped = false;
    for c in dn.chars() {
        let attr = rdns.last_mut().unwrap().last_mut().unwrap();
        match c {
            _ if escaped => {
                attr.push(c);
                escaped = false;
            }
            '\\' => {
                attr.push(c);
                escaped = true;
            }
            ',' => rdns.push(vec![String::new()]),
            '+' => rdns.last_mut().unwrap().push(String::new()),
            c => attr.push(c),
        }
    }
    rdns.into_iter()
        .map(|mut rdn| {
            rdn.reverse();
            for attr in &mut rdn {
                if attr.ends_with("=#") && attr.matches('=').count() == 1 {
                    attr.insert(attr.len() - 1, '\\');
                }
            }
            rdn.join("+")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Text for a string type: any character it can hold, and the ones RFC 4514 escapes.
fn text(kind: Kind) -> BoxedStrategy<String> {
    let special = prop::sample::select(vec![',', '+', '"', '\\', '<', '>', ';', '#', ' ', '=']);
    let chars: BoxedStrategy<char> = match kind {
        // No control characters: OpenSSL escapes them and Go does not.
        Kind::Utf8 | Kind::Universal => prop_oneof![
            2 => any::<char>().prop_filter("not a control", |c| !c.is_control()),
            1 => special,
        ]
        .boxed(),
        Kind::Printable => {
            prop::sample::select("ABCXYZabcxyz0189 '()+,-./:=?".chars().collect::<Vec<_>>()).boxed()
        }
        Kind::Ia5 => prop_oneof![(0x20u8..0x7f).prop_map(char::from), special].boxed(),
        Kind::Teletex => prop_oneof![
            (0x20u8..0x7f).prop_map(char::from),
            (0xa0u8..=0xff).prop_map(char::from),
            special
        ]
        .boxed(),
        // The Basic Multilingual Plane without surrogates (OpenSSL reads BMPString as
        // UCS-2; pairs are tested on their own below).
        Kind::Bmp => prop_oneof![
            2 => (0x20u32..0xd800)
                .prop_union(0xe000u32..0xfffe)
                .prop_filter_map("a character", |u| char::from_u32(u).filter(|c| !c.is_control())),
            1 => special,
        ]
        .boxed(),
    };
    prop::collection::vec(chars, 1..10)
        .prop_map(|v| v.into_iter().collect())
        .boxed()
}

fn attr() -> impl Strategy<Value = Attr> {
    let kind = prop::sample::select(vec![
        Kind::Utf8,
        Kind::Printable,
        Kind::Ia5,
        Kind::Teletex,
        Kind::Bmp,
        Kind::Universal,
    ]);
    let field = prop::sample::select(vec!["CN", "O", "OU", "L", "ST", "C"]);
    (field, kind)
        .prop_flat_map(|(field, kind)| text(kind).prop_map(move |text| Attr { field, kind, text }))
}

fn rdns() -> impl Strategy<Value = Vec<Vec<Attr>>> {
    prop::collection::vec(
        prop_oneof![4 => attr().prop_map(|a| vec![a]), 1 => prop::collection::vec(attr(), 2..3)],
        1..6,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn names_decode_as_openssl_reads_them(rdns in rdns()) {
        let der = certificate(&name(&rdns));
        let info = parse_der(&der).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let s = &info.subject;
        let all = |f: &str| rdns.iter().flatten().filter(|a| a.field == f).map(|a| a.text.clone()).collect::<Vec<_>>();
        // Inside a multi-valued RDN the attributes are in DER's order, so compare as sets.
        let sorted = |mut v: Vec<String>| { v.sort(); v };
        prop_assert_eq!(sorted(s.ou.clone()), sorted(all("OU")));
        prop_assert_eq!(sorted(s.o.clone()), sorted(all("O")));
        let cns = all("CN");
        prop_assert!(cns.is_empty() && s.cn.is_empty() || cns.contains(&s.cn), "CN {:?} of {:?}", s.cn, cns);
        prop_assert_eq!(&s.dn, &go_order(&openssl_subject(&der)));
    }
}

#[test]
fn every_string_type_is_decoded() {
    let a = |field, kind, text: &str| {
        vec![Attr {
            field,
            kind,
            text: text.into(),
        }]
    };
    let der = certificate(&name(&[
        a("C", Kind::Printable, "DE"),
        a("O", Kind::Teletex, "Müller GmbH"),
        a("OU", Kind::Bmp, "contractors"),
        a("OU", Kind::Bmp, "Ärzte 😀"), // a surrogate pair, as Go decodes UTF-16
        a("OU", Kind::Universal, "研究"),
        a("CN", Kind::Ia5, "alice, OU=admins"),
    ]));
    let c = parse_der(&der).unwrap();
    assert_eq!(c.subject.o, vec!["Müller GmbH"]);
    assert_eq!(c.subject.ou, vec!["contractors", "Ärzte 😀", "研究"]);
    assert_eq!(c.subject.cn, "alice, OU=admins");
    assert_eq!(c.subject.c, "DE");
    // The comma is escaped: the CN cannot pass for another attribute.
    assert_eq!(
        c.subject.dn,
        "CN=alice\\, OU\\=admins,OU=研究,OU=Ärzte 😀,OU=contractors,O=Müller GmbH,C=DE"
            .replace("OU\\=", "OU=")
    );
}

#[test]
fn a_name_that_cannot_be_decoded_refuses_the_certificate() {
    let raw = |field: &str, tag: u8, bytes: &[u8]| {
        seq(&[tlv(0x31, &seq(&[oid(field), tlv(tag, bytes)]))])
    };
    for (subject, why) in [
        (
            raw("OU", 0x1e, b"\x00a\x00"),
            "subject OU: BMPString has an odd length",
        ),
        (
            raw("OU", 0x1e, b"\xd8\x00\x00a"),
            "subject OU: BMPString is not valid UTF-16",
        ),
        (
            raw("CN", 0x1c, b"\x00\x11\x00\x00"),
            "subject CN: UniversalString holds a value",
        ),
        (
            raw("CN", 0x1c, b"\x00\x00\x00"),
            "subject CN: UniversalString's length",
        ),
        (
            raw("O", 0x0c, b"\xff"),
            "subject O: UTF8String is not UTF-8",
        ),
        (
            raw("O", 0x13, "é".as_bytes()),
            "subject O: PrintableString holds bytes that are not ASCII",
        ),
        (
            raw("OU", 0x04, b"ml-users"),
            "subject OU: OctetString is not a string type",
        ),
    ] {
        let der = certificate(&subject);
        let e = parse_der(&der).unwrap_err().to_string();
        assert!(e.contains(why), "want {why:?}, got {e:?}");
    }
}
