//! Unit tests of the filter language: accepted syntax and the tree it gives, rejected input and
//! its messages, limits, and a fuzz that no input panics the parser.

use super::*;

fn ok(input: &str) -> Filter {
    match parse(input) {
        Ok(Some(filter)) => filter,
        other => panic!("{input:?} gave {other:?}"),
    }
}

fn fails(input: &str) -> String {
    match parse(input) {
        Err(error) => error.message,
        other => panic!("{input:?} gave {other:?}"),
    }
}

fn equals(field: FilterField, value: &str) -> Filter {
    Filter::Equals {
        field,
        value: value.to_string(),
    }
}

fn like(field: FilterField, pattern: &str) -> Filter {
    Filter::Like {
        field,
        pattern: pattern.to_string(),
    }
}

fn not(filter: Filter) -> Filter {
    Filter::Not(Box::new(filter))
}

fn label(key: &str) -> FilterField {
    FilterField::Label(key.to_string())
}

fn name(value: &str) -> Filter {
    equals(FilterField::Name, value)
}

fn status(value: &str) -> Filter {
    Filter::StatusIs(ServerStatus::parse(value).unwrap())
}

#[test]
fn empty_and_whitespace_mean_no_filter() {
    assert_eq!(parse(""), Ok(None));
    assert_eq!(parse("  \t\n "), Ok(None));
}

#[test]
fn comparisons() {
    assert_eq!(ok("name = db1"), name("db1"));
    assert_eq!(ok("name=db1"), name("db1"));
    assert_eq!(
        ok("host != 10.0.0.1"),
        not(equals(FilterField::Host, "10.0.0.1"))
    );
    assert_eq!(
        ok("host:db1.internal:3306"),
        equals(FilterField::Host, "db1.internal:3306")
    );
    assert_eq!(ok("labels.env = prod"), equals(label("env"), "prod"));
    assert_eq!(
        ok("labels.team-a_1 != x"),
        not(equals(label("team-a_1"), "x"))
    );
    assert_eq!(ok("labels.env:prod"), equals(label("env"), "prod"));
}

#[test]
fn label_presence() {
    assert_eq!(ok("labels:env"), Filter::HasLabel("env".into()));
    assert_eq!(ok("labels : \"env\""), Filter::HasLabel("env".into()));
    assert_eq!(ok("labels.env:*"), Filter::HasLabel("env".into()));
    assert_eq!(ok("-labels:env"), not(Filter::HasLabel("env".into())));
    assert_eq!(ok("labels.env = *"), like(label("env"), "%"));
}

#[test]
fn precedence_or_binds_tighter_than_and() {
    assert_eq!(
        ok("name = a AND name = b OR name = c"),
        Filter::And(vec![name("a"), Filter::Or(vec![name("b"), name("c")])])
    );
    assert_eq!(
        ok("name = a OR name = b AND name = c"),
        Filter::And(vec![Filter::Or(vec![name("a"), name("b")]), name("c")])
    );
    assert_eq!(
        ok("NOT name = a OR name = b"),
        Filter::Or(vec![not(name("a")), name("b")])
    );
}

#[test]
fn juxtaposition_means_and() {
    assert_eq!(
        ok("name = a name = b OR name = c"),
        Filter::And(vec![name("a"), Filter::Or(vec![name("b"), name("c")])])
    );
    assert_eq!(
        ok("  status=active\thost:h  "),
        Filter::And(vec![status("active"), equals(FilterField::Host, "h")])
    );
}

#[test]
fn negation() {
    assert_eq!(ok("-status = active"), not(status("active")));
    assert_eq!(ok("NOT status = active"), not(status("active")));
    assert_eq!(
        ok("NOT(name = a OR name = b)"),
        not(Filter::Or(vec![name("a"), name("b")]))
    );
    assert_eq!(ok("-(name = a)"), not(name("a")));
    assert_eq!(ok("name = -a"), name("-a"));
    assert_eq!(ok("- status = active"), not(status("active")));
    // Keywords are whole words only.
    assert_eq!(
        ok("name = ORDER OR name = NOTE"),
        Filter::Or(vec![name("ORDER"), name("NOTE")])
    );
}

#[test]
fn parentheses_and_flattening() {
    assert_eq!(ok("((name = a))"), name("a"));
    assert_eq!(
        ok("(name = a AND name = b) AND name = c name = d"),
        Filter::And(vec![name("a"), name("b"), name("c"), name("d")])
    );
    assert_eq!(
        ok("name = a OR (name = b OR name = c)"),
        Filter::Or(vec![name("a"), name("b"), name("c")])
    );
    assert_eq!(
        ok("(name = a AND name = b) OR name = c"),
        Filter::Or(vec![Filter::And(vec![name("a"), name("b")]), name("c")])
    );
    assert_eq!(
        ok("(name = a)(name = b)"),
        Filter::And(vec![name("a"), name("b")])
    );
}

#[test]
fn quoting_and_escapes() {
    assert_eq!(ok(r#"name = "a b""#), name("a b"));
    assert_eq!(ok(r#"name = "say \"hi\" \\ ok""#), name(r#"say "hi" \ ok"#));
    assert_eq!(ok(r#"name = "AND""#), name("AND"));
    assert_eq!(ok(r#"name = "(x) = y""#), name("(x) = y"));
    assert_eq!(ok(r#"name = """#), name(""));
    assert_eq!(ok("name = \"café ☕\""), name("café ☕"));
}

#[test]
fn wildcards_become_escaped_like_patterns() {
    assert_eq!(
        ok(r#"name = "50%_off*""#),
        like(FilterField::Name, r"50\%\_off%")
    );
    assert_eq!(ok(r#"name = "a\\b*""#), like(FilterField::Name, r"a\\b%"));
    assert_eq!(
        ok("host = *.internal"),
        like(FilterField::Host, "%.internal")
    );
    assert_eq!(ok("name : orders-*"), like(FilterField::Name, "orders-%"));
    assert_eq!(
        ok("name != orders-*"),
        not(like(FilterField::Name, "orders-%"))
    );
    assert_eq!(ok("labels.app = web*"), like(label("app"), "web%"));
    // Without a wildcard the value is taken literally, unescaped.
    assert_eq!(ok(r#"name = "50%_off""#), name("50%_off"));
}

#[test]
fn enum_values_are_normalised() {
    assert_eq!(ok("status = ACTIVE"), status("active"));
    assert_eq!(ok("status = SERVER_STATUS_ACTIVE"), status("active"));
    assert_eq!(ok("status : \"server_status_Pending\""), status("pending"));
    assert_eq!(
        ok("status != Decommissioned"),
        not(status("decommissioned"))
    );
    assert_eq!(
        ok("connection_method = CONNECTION_METHOD_SSH_TUNNEL"),
        Filter::ConnectionMethodIs(ConnectionMethod::SshTunnel)
    );
    assert_eq!(
        ok("connection_method = \"Vpn\""),
        Filter::ConnectionMethodIs(ConnectionMethod::Vpn)
    );
}

#[test]
fn enum_errors() {
    assert_eq!(
        fails("status = running"),
        "unknown value \"running\" for status at position 10; allowed values are pending, active, disconnected, paused, error, decommissioned"
    );
    assert_eq!(
        fails("status = SERVER_STATUS_UNSPECIFIED"),
        "unknown value \"SERVER_STATUS_UNSPECIFIED\" for status at position 10; allowed values are pending, active, disconnected, paused, error, decommissioned"
    );
    assert_eq!(
        fails("connection_method = \"ssh\""),
        "unknown value \"ssh\" for connection_method at position 21; allowed values are direct, vpn, ssh_tunnel"
    );
    assert_eq!(
        fails("status = act*"),
        "status does not accept wildcards: \"act*\" at position 10; allowed values are pending, active, disconnected, paused, error, decommissioned"
    );
}

#[test]
fn field_errors() {
    let fields = "filterable fields are status, connection_method, name, host and labels.KEY (labels:KEY tests presence)";
    assert_eq!(
        fails("color = red"),
        format!("unknown field \"color\" at position 1; {fields}")
    );
    assert_eq!(
        fails("name = a AND mysql_password = x"),
        format!("unknown field \"mysql_password\" at position 14; {fields}")
    );
    assert_eq!(
        fails("NOTE = x"),
        format!("unknown field \"NOTE\" at position 1; {fields}")
    );
    assert_eq!(
        fails("labels = x"),
        format!("unknown field \"labels\" at position 1; {fields}")
    );
    assert_eq!(
        fails("name = a and name = b"),
        format!(
            "unknown field \"and\" at position 10 (the keywords AND, OR and NOT must be uppercase); {fields}"
        )
    );
    assert_eq!(
        fails("labels.a.b = x"),
        "invalid label key \"a.b\" at position 8; a key is one or more letters, digits, \"_\" or \"-\""
    );
    assert_eq!(
        fails("labels. = x"),
        "invalid label key \"\" at position 8; a key is one or more letters, digits, \"_\" or \"-\""
    );
    assert_eq!(
        fails("labels:\"a/b\""),
        "invalid label key \"a/b\" at position 8; a key is one or more letters, digits, \"_\" or \"-\""
    );
}

#[test]
fn operator_errors() {
    assert_eq!(
        fails("name < b"),
        "operator \"<\" at position 6 is not supported; use =, != or :"
    );
    assert_eq!(
        fails("name>=b"),
        "operator \">=\" at position 5 is not supported; use =, != or :"
    );
    assert_eq!(
        fails("name ~ b"),
        "expected =, != or : after \"name\" at position 6, found \"~\""
    );
    assert_eq!(
        fails("name"),
        "expected =, != or : after \"name\" at position 5, found end of filter"
    );
    assert_eq!(
        fails("name ! b"),
        "expected =, != or : after \"name\" at position 6, found \"!\""
    );
}

#[test]
fn structure_errors() {
    let restriction = "expected a restriction such as status = active, or \"(\"";
    assert_eq!(
        fails("name = a AND"),
        format!("{restriction} at position 13, found end of filter")
    );
    assert_eq!(
        fails("OR name = a"),
        format!("{restriction} at position 1, found \"OR\"")
    );
    assert_eq!(
        fails("name = a AND AND name = b"),
        format!("{restriction} at position 14, found \"AND\"")
    );
    assert_eq!(
        fails("()"),
        format!("{restriction} at position 2, found \")\"")
    );
    assert_eq!(
        fails("NOT NOT name = a"),
        format!("{restriction} at position 5, found \"NOT\"")
    );
    assert_eq!(fails("(name = a"), "\"(\" at position 1 is never closed");
    assert_eq!(
        fails("name = a)"),
        "unexpected \")\" at position 9; it has no matching \"(\""
    );
    assert_eq!(
        fails("name = a # b"),
        format!("{restriction} at position 10, found \"#\"")
    );
}

#[test]
fn value_errors() {
    assert_eq!(
        fails("name = "),
        "expected a value at position 8, found end of filter"
    );
    assert_eq!(
        fails("name = (a)"),
        "expected a value at position 8, found \"(\""
    );
    assert_eq!(
        fails("name = OR"),
        "expected a value at position 8, found keyword \"OR\"; quote it to use it as a value"
    );
    assert_eq!(
        fails("name = a,b"),
        "unexpected \",\" at position 9; quote a value that contains characters other than letters, digits and _ . - * / : @"
    );
    assert_eq!(
        fails("name = café"),
        "unexpected \"é\" at position 11; quote a value that contains characters other than letters, digits and _ . - * / : @"
    );
    assert_eq!(
        fails("name = \"a\"name = b"),
        "unexpected \"name\" at position 11; separate restrictions with whitespace"
    );
    assert_eq!(
        fails("name = \"abc"),
        "string starting at position 8 has no closing \""
    );
    assert_eq!(
        fails("name = \"abc\\"),
        "string starting at position 8 has no closing \""
    );
    assert_eq!(
        fails(r#"name = "a\nb""#),
        r#"unsupported escape "\n" at position 10; only \" and \\ are allowed in strings"#
    );
}

#[test]
fn control_characters_are_refused_with_their_position() {
    assert_eq!(
        fails("name = \"a\u{0}b\""),
        "control character U+0000 at position 10 is not allowed in a filter"
    );
    assert_eq!(
        fails("labels.k = \"\u{1b}[31m\""),
        "control character U+001B at position 13 is not allowed in a filter"
    );
    assert_eq!(
        fails("host = \"é\u{7f}\""),
        "control character U+007F at position 10 is not allowed in a filter"
    );
    assert_eq!(ok("name = \"a\tb\""), name("a\tb"));
}

#[test]
fn positions_count_characters_not_bytes() {
    assert_eq!(
        fails("name = \"é\" AND colour = x"),
        "unknown field \"colour\" at position 16; filterable fields are status, connection_method, name, host and labels.KEY (labels:KEY tests presence)"
    );
}

#[test]
fn limits() {
    let longest = format!("name = \"{}\"", "x".repeat(MAX_LENGTH - 9));
    assert_eq!(longest.chars().count(), MAX_LENGTH);
    assert!(parse(&longest).is_ok());
    let too_long = format!("name = \"{}\"", "x".repeat(MAX_LENGTH - 8));
    assert_eq!(
        fails(&too_long),
        "filter is 2001 characters long; the limit is 2000"
    );

    let nested = |depth: usize| format!("{}name = a{}", "(".repeat(depth), ")".repeat(depth));
    assert_eq!(ok(&nested(MAX_DEPTH)), name("a"));
    assert_eq!(
        fails(&nested(MAX_DEPTH + 1)),
        "\"(\" at position 33 nests parentheses deeper than 32 levels"
    );
    assert_eq!(
        fails(&"(".repeat(MAX_LENGTH)),
        "\"(\" at position 33 nests parentheses deeper than 32 levels"
    );
}

/// Every error must say where; a panic anywhere fails the test.
fn assert_no_panic(input: &str) {
    if let Err(error) = parse(input) {
        assert!(
            error.message.contains("at position") || error.message.starts_with("filter is"),
            "{input:?} gave {:?}",
            error.message
        );
    }
}

#[test]
fn garbage_never_panics() {
    let seeds = [
        r#"(status = SERVER_STATUS_ACTIVE OR connection_method:"vpn") AND -name = "db-*" NOT labels:env"#,
        r#"labels.app = "web\"*\\" host != 10.0.0.1:3306 OR (labels.team:* AND NOT (name < x))"#,
        "status=active name=a\u{e9}\u{1F600} OR -(host:h*) labels.a-b!=\"%_\\\\\" AND ((((x))))",
    ];
    for seed in seeds {
        assert_no_panic(seed);
        let chars: Vec<char> = seed.chars().collect();
        for start in 0..chars.len() {
            for end in start..=chars.len() {
                assert_no_panic(&chars[start..end].iter().collect::<String>());
            }
        }
    }
    let alphabet = b"()\"\\ =!:<>-*.%_AaNnDdOoRrTt\t\xc3\xa9\x00\xff";
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut random = move |bound: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % bound as u64) as usize
    };
    for round in 0..20_000 {
        let mut bytes = seeds[round % seeds.len()].as_bytes().to_vec();
        for _ in 0..=random(6) {
            let at = random(bytes.len() + 1);
            let byte = if random(2) == 0 {
                alphabet[random(alphabet.len())]
            } else {
                random(256) as u8
            };
            match random(4) {
                0 if at < bytes.len() => bytes[at] = byte,
                1 if at < bytes.len() => {
                    bytes.remove(at);
                }
                2 => {
                    let chunk = bytes[at..]
                        .iter()
                        .take(random(12))
                        .copied()
                        .collect::<Vec<_>>();
                    bytes.splice(at..at, chunk);
                }
                _ => bytes.insert(at, byte),
            }
        }
        assert_no_panic(&String::from_utf8_lossy(&bytes));
        let noise: Vec<u8> = (0..random(40))
            .map(|_| alphabet[random(alphabet.len())])
            .collect();
        assert_no_panic(&String::from_utf8_lossy(&noise));
    }
    assert_no_panic(&"NOT -".repeat(400));
    assert_no_panic(&"a=b OR ".repeat(285));
    assert_no_panic(&"\"".repeat(3_000));
}
