//! The route table's refusals and matches, on example protos compiled here and on the
//! service's own.

use prost_reflect::DescriptorPool;

use super::*;
use crate::gateway::request::{HttpParts, build_request};

/// The routes of `example.proto` (with this repository's google/api protos), or why not.
fn routes_of(body: &str) -> Result<RouteTable, RouteError> {
    let source = format!(
        "syntax = \"proto3\";\npackage example.v1;\n\
         import \"google/api/annotations.proto\";\n\
         import \"google/api/field_behavior.proto\";\n\
         import \"google/protobuf/timestamp.proto\";\n{body}"
    );
    let directory = tempfile::tempdir().unwrap();
    std::fs::write(directory.path().join("example.proto"), source).unwrap();
    let repository_protos = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let mut compiler = protox::Compiler::new([directory.path(), &repository_protos]).unwrap();
    compiler
        .include_imports(true)
        .open_files(["example.proto"])
        .unwrap();
    let pool = DescriptorPool::decode(compiler.encode_file_descriptor_set().as_slice()).unwrap();
    RouteTable::build(&Descriptors::from_pool(pool))
}

fn refusal(body: &str) -> String {
    match routes_of(body) {
        Ok(table) => panic!("accepted: {table:?}"),
        Err(error) => error.to_string(),
    }
}

const MESSAGES: &str = "
    message Shelf { string id = 1 [(google.api.field_behavior) = IDENTIFIER]; string theme = 2; }
    message Filter {
      enum Cover { COVER_UNSPECIFIED = 0; COVER_HARD = 1; COVER_PAPER = 2; }
      repeated string authors = 1;
      Cover cover = 2;
      google.protobuf.Timestamp after = 3;
    }
    message ListBooksRequest { Filter filter = 1; int32 page_size = 2; }
    message PauseShelfRequest { string id = 1; bool notify = 2; }
    message CreateShelfRequest { Shelf shelf = 1; }
    message TaggedRequest { map<string, string> tags = 1; }
";

/// A service with a custom verb, an additional binding, a list with query parameters, a create
/// and an RPC with no rule.
fn shelves() -> RouteTable {
    routes_of(&format!(
        "service Shelves {{
           rpc PauseShelf(PauseShelfRequest) returns (Shelf) {{
             option (google.api.http) = {{
               post: \"/v1/shelves/{{id}}:pause\" body: \"*\"
               additional_bindings {{ post: \"/v1/paused-shelves/{{id}}\" body: \"*\" }}
             }};
           }}
           rpc ListBooks(ListBooksRequest) returns (Shelf) {{
             option (google.api.http) = {{ get: \"/v1/books\" }};
           }}
           rpc CreateShelf(CreateShelfRequest) returns (Shelf) {{
             option (google.api.http) = {{ post: \"/v1/shelves\" body: \"shelf\" }};
           }}
           rpc Internal(Shelf) returns (Shelf);
         }}
         {MESSAGES}"
    ))
    .unwrap()
}

#[test]
fn a_new_annotated_rpc_gets_its_routes_with_no_new_code() {
    let table = shelves();
    let routes: Vec<(String, String)> = table
        .routes
        .iter()
        .map(|route| (route.method.to_string(), route.template.openapi_path()))
        .collect();
    assert_eq!(
        routes,
        [
            ("POST".to_owned(), "/v1/shelves/{id}:pause".to_owned()),
            ("POST".to_owned(), "/v1/paused-shelves/{id}".to_owned()),
            ("GET".to_owned(), "/v1/books".to_owned()),
            ("POST".to_owned(), "/v1/shelves".to_owned()),
        ]
    );
    match table.find(&Method::POST, "/v1/shelves/s-1:pause") {
        RouteMatch::Found { route, values } => {
            assert_eq!(route.rpc.name(), "PauseShelf");
            assert_eq!(values, ["s-1"]);
        }
        _ => panic!("no route for the custom verb"),
    }
    let create = &table.routes[3];
    assert_eq!(
        create
            .created_identifier
            .as_ref()
            .map(FieldDescriptor::name),
        Some("id")
    );
}

/// Nested, repeated, enum and well-known query parameters, by their dotted names.
#[test]
fn query_parameters_set_nested_fields_by_dotted_names() {
    let table = shelves();
    let list = &table.routes[2];
    let names: Vec<&str> = list
        .query
        .iter()
        .map(|parameter| parameter.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "filter.authors",
            "filter.cover",
            "filter.after",
            "page_size"
        ]
    );
    let descriptors = Descriptors::from_pool(list.rpc.parent_pool().clone());
    let message = build_request(
        &descriptors,
        list,
        HttpParts {
            path_values: vec![],
            query: Some(
                "filter.authors=le%20guin&filter.authors=banks&filter.cover=paper\
                 &filter.after=2024-01-02T03:04:05Z&page_size=3",
            ),
            body: None,
            last_event_id: None,
        },
    )
    .unwrap();
    let json = crate::gateway::json::message_to_json(&descriptors, &message).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "filter": {"authors": ["le guin", "banks"], "cover": "paper",
                       "after": "2024-01-02T03:04:05Z"},
            "page_size": 3,
        })
    );
}

#[test]
fn shapes_that_cannot_be_served_are_refused_at_start_up() {
    let service = |rpc: &str| format!("service Shelves {{ {rpc} }} {MESSAGES}");
    let cases = [
        (
            "rpc A(PauseShelfRequest) returns (Shelf) { option (google.api.http) = { get: \"/v1/{id=shelves/*}\" }; }",
            "spans more than one segment",
        ),
        (
            "rpc A(PauseShelfRequest) returns (Shelf) { option (google.api.http) = { get: \"/v1/{id}\" body: \"*\" }; }",
            "cannot take a body",
        ),
        (
            "rpc A(TaggedRequest) returns (Shelf) { option (google.api.http) = { get: \"/v1/tagged\" }; }",
            "\"tags\" is set by neither the path nor the body",
        ),
        (
            "rpc A(stream PauseShelfRequest) returns (Shelf) { option (google.api.http) = { post: \"/v1/a\" body: \"*\" }; }",
            "client-streaming",
        ),
        (
            "rpc A(PauseShelfRequest) returns (Shelf) { option (google.api.http) = { get: \"/v1/{colour}\" }; }",
            "has no field \"colour\"",
        ),
        (
            "rpc A(PauseShelfRequest) returns (Shelf) { option (google.api.http) = { post: \"/v1/a\" body: \"notify\" }; }",
            "must be a singular message field",
        ),
        (
            "rpc A(PauseShelfRequest) returns (Shelf) { option (google.api.http) = { get: \"/v1/{id}\" }; }
             rpc B(PauseShelfRequest) returns (Shelf) { option (google.api.http) = { get: \"/v1/{id}\" }; }",
            "is already the route of example.v1.Shelves.A",
        ),
    ];
    for (rpc, expected) in cases {
        let message = refusal(&service(rpc));
        assert!(message.contains(expected), "{rpc}: {message}");
        assert!(message.starts_with("example.v1.Shelves."), "{message}");
    }
    assert!(refusal(&service("rpc A(PauseShelfRequest) returns (Shelf);")).contains("no RPC has"));
    let clash = refusal(
        "service Shelves {
           rpc A(Painted) returns (Painted) { option (google.api.http) = { get: \"/v1/painted\" }; }
         }
         enum Colour { COLOUR_UNSPECIFIED = 0; COLOUR_RED = 1; RED = 2; }
         message Painted { Colour colour = 1; }",
    );
    assert!(clash.contains("COLOUR_RED and RED"), "{clash}");
}

fn table() -> RouteTable {
    RouteTable::build(&Descriptors::load(crate::proto::FILE_DESCRIPTOR_SET).unwrap()).unwrap()
}

#[test]
fn the_schema_change_feed_has_its_route() {
    let table = table();
    let feed = table
        .routes
        .iter()
        .find(|route| route.rpc.name() == "ListSchemaChanges")
        .expect("a route");
    assert_eq!(feed.method.to_string(), "GET");
    assert_eq!(feed.template.text, "/servers/{server_id}/schema-changes");
}

/// The route of the RPC `name`.
fn route_of<'a>(table: &'a RouteTable, name: &str) -> &'a Route {
    table
        .routes
        .iter()
        .find(|route| route.rpc.name() == name)
        .unwrap_or_else(|| panic!("no route for {name}"))
}

#[test]
fn every_annotated_rpc_has_its_route() {
    let table = table();
    let routes: Vec<(String, String, &str)> = table
        .routes
        .iter()
        .map(|route| {
            (
                route.method.to_string(),
                route.template.text.clone(),
                route.rpc.name(),
            )
        })
        .collect();
    assert_eq!(routes.len(), 25);
    assert!(routes.contains(&(
        "POST".into(),
        "/webhooks/{webhook_id}/deliveries/{delivery_id}:redeliver".into(),
        "RedeliverWebhook"
    )));
    assert!(routes.contains(&(
        "GET".into(),
        "/servers/{server_id}/revert-sql".into(),
        "RevertChanges"
    )));
    assert!(routes.contains(&(
        "PATCH".into(),
        "/servers/{server.server_id}".into(),
        "UpdateServer"
    )));
    let register = route_of(&table, "RegisterServer");
    assert_eq!(
        register
            .created_identifier
            .as_ref()
            .map(FieldDescriptor::name),
        Some("server_id")
    );
    let query: Vec<&str> = register
        .query
        .iter()
        .map(|parameter| parameter.name.as_str())
        .collect();
    assert_eq!(query, ["request_id", "validate_only"]);
    let update = route_of(&table, "UpdateServer");
    assert!(update.derived_update_mask.is_some());
    assert!(update.created_identifier.is_none());
    let watch = route_of(&table, "WatchOnboarding");
    assert!(
        watch
            .resume
            .as_ref()
            .is_some_and(|resume| resume.since.is_some())
    );
}

#[test]
fn paths_find_the_most_specific_route_and_methods_are_told_apart() {
    let table = table();
    match table.find(&Method::GET, "/servers/abc%2Fdef/onboarding-status") {
        RouteMatch::Found { route, values } => {
            assert_eq!(route.rpc.name(), "GetOnboardingStatus");
            assert_eq!(values, ["abc/def"]);
        }
        _ => panic!("no route"),
    }
    match table.find(&Method::PUT, "/servers/x") {
        RouteMatch::MethodNotAllowed(allowed) => {
            assert_eq!(allowed, [Method::GET, Method::PATCH, Method::DELETE]);
        }
        _ => panic!("expected 405"),
    }
    // A custom verb outranks a bare variable: the verb's path exists with POST only.
    match table.find(&Method::PATCH, "/servers/x:restart-stream") {
        RouteMatch::MethodNotAllowed(allowed) => assert_eq!(allowed, [Method::POST]),
        _ => panic!("expected 405"),
    }
    assert!(matches!(
        table.find(&Method::POST, "/servers/x:restart-stream"),
        RouteMatch::Found { route, .. } if route.rpc.name() == "RestartStream"
    ));
    assert!(matches!(
        table.find(&Method::GET, "/servers/"),
        RouteMatch::NotFound
    ));
    assert!(matches!(
        table.find(&Method::GET, "/nothing"),
        RouteMatch::NotFound
    ));
}

#[test]
fn templates_parse_verbs_and_refuse_what_they_cannot_serve() {
    let descriptors = Descriptors::load(crate::proto::FILE_DESCRIPTOR_SET).unwrap();
    let request = descriptors
        .pool
        .get_message_by_name("dbtrail.servers.v1.GetServerRequest")
        .unwrap();
    let template = PathTemplate::parse("/servers/{server_id=*}:pause", &request).unwrap();
    assert_eq!(template.openapi_path(), "/servers/{server_id}:pause");
    assert_eq!(
        template.matches("/servers/a:b:pause"),
        Some(vec!["a:b".to_owned()])
    );
    assert_eq!(template.matches("/servers/a"), None);
    for bad in [
        "servers",
        "/servers/{server_id=servers/*}",
        "/servers/**",
        "/servers/{colour}",
        "/servers//x",
    ] {
        assert!(PathTemplate::parse(bad, &request).is_err(), "{bad}");
    }
}
