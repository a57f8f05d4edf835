//! Path templates: parsing `/a/{field.path}/b:verb` against the request message, matching a
//! path to it, and ranking templates by how specific they are.

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};

use crate::gateway::descriptors::{is_well_known, message_of};

/// Well-known types a query parameter or path variable can carry as a string.
pub(super) const STRING_WELL_KNOWN_TYPES: [&str; 3] = [
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.FieldMask",
];

/// A chain of fields from the request message down to one field, e.g. `server.server_id`.
#[derive(Clone, Debug)]
pub struct FieldPath {
    /// The dotted proto names.
    pub name: String,
    /// The fields, outermost first; the last is the one the path names.
    pub fields: Vec<FieldDescriptor>,
}

impl FieldPath {
    /// The field the path ends at.
    pub fn leaf(&self) -> Option<&FieldDescriptor> {
        self.fields.last()
    }

    fn resolve(message: &MessageDescriptor, name: &str) -> Result<FieldPath, String> {
        let mut fields = Vec::new();
        let mut current = message.clone();
        let parts: Vec<&str> = name.split('.').collect();
        for (index, part) in parts.iter().enumerate() {
            let field = current
                .get_field_by_name(part)
                .ok_or_else(|| format!("{} has no field {part:?} (in {name:?})", current.name()))?;
            if index + 1 < parts.len() {
                match message_of(&field) {
                    Some(next) if !field.is_list() && !field.is_map() && !is_well_known(&next) => {
                        current = next;
                    }
                    _ => return Err(format!("{part:?} in {name:?} is not a singular message")),
                }
            }
            fields.push(field);
        }
        Ok(FieldPath {
            name: name.to_owned(),
            fields,
        })
    }
}

/// One segment of a path template.
#[derive(Clone, Debug)]
enum Segment {
    Literal(String),
    /// A variable: one non-empty path segment, bound to the field path at this index of
    /// `PathTemplate::variables`.
    Variable(usize),
}

/// A parsed path template.
#[derive(Clone, Debug)]
pub struct PathTemplate {
    /// The template as the rule wrote it.
    pub text: String,
    segments: Vec<Segment>,
    verb: Option<String>,
    /// The fields the variables bind, in order of appearance.
    pub variables: Vec<FieldPath>,
}

impl PathTemplate {
    pub(super) fn parse(
        template: &str,
        request: &MessageDescriptor,
    ) -> Result<PathTemplate, String> {
        let rest = template
            .strip_prefix('/')
            .ok_or_else(|| format!("path template {template:?} does not start with '/'"))?;
        let (path, verb) = split_verb(template, rest)?;
        let mut segments = Vec::new();
        let mut variables = Vec::new();
        for segment in split_segments(path) {
            if segment.is_empty() {
                return Err(format!("path template {template:?} has an empty segment"));
            }
            if let Some(inner) = segment.strip_prefix('{') {
                let inner = inner.strip_suffix('}').ok_or_else(|| {
                    format!(
                        "path template {template:?}: variable {segment:?} is not one whole segment"
                    )
                })?;
                let (name, pattern) = inner.split_once('=').unwrap_or((inner, "*"));
                if pattern != "*" {
                    return Err(format!(
                        "path template {template:?}: variable {{{name}={pattern}}} spans more than \
                         one segment; only {{field}} and {{field=*}} are supported"
                    ));
                }
                let field_path = FieldPath::resolve(request, name)?;
                check_scalar_leaf(&field_path)?;
                segments.push(Segment::Variable(variables.len()));
                variables.push(field_path);
            } else if segment == "*" || segment == "**" || segment.contains(['{', '}']) {
                return Err(format!(
                    "path template {template:?}: wildcard or partial segment {segment:?} is not \
                     supported; bind the segment to a field with {{field}}"
                ));
            } else {
                segments.push(Segment::Literal(segment.to_owned()));
            }
        }
        Ok(PathTemplate {
            text: template.to_owned(),
            segments,
            verb,
            variables,
        })
    }

    /// The values of the variables when `path` (as sent, percent-encoded) matches.
    pub(super) fn matches(&self, path: &str) -> Option<Vec<String>> {
        let rest = path.strip_prefix('/')?;
        let rest = match &self.verb {
            Some(verb) => rest.strip_suffix(verb.as_str())?.strip_suffix(':')?,
            None => rest,
        };
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.len() != self.segments.len() {
            return None;
        }
        let mut values = vec![String::new(); self.variables.len()];
        for (segment, part) in self.segments.iter().zip(parts) {
            match segment {
                Segment::Literal(literal) if literal == part => {}
                Segment::Literal(_) => return None,
                Segment::Variable(_) if part.is_empty() => return None,
                Segment::Variable(index) => {
                    values[*index] = percent_encoding::percent_decode_str(part)
                        .decode_utf8_lossy()
                        .into_owned();
                }
            }
        }
        Some(values)
    }

    /// How specific the template is: one with a custom verb above one without, then literal
    /// segments above variables, position by position.
    pub(super) fn rank(&self) -> (bool, Vec<bool>) {
        (self.verb.is_some(), self.specificity())
    }

    /// Literal segments rank above variables, position by position: the most specific route wins.
    fn specificity(&self) -> Vec<bool> {
        self.segments
            .iter()
            .map(|segment| matches!(segment, Segment::Literal(_)))
            .collect()
    }

    /// The template as OpenAPI writes it: `{server.server_id}` for a variable.
    pub fn openapi_path(&self) -> String {
        let mut path = String::new();
        for segment in &self.segments {
            path.push('/');
            match segment {
                Segment::Literal(literal) => path.push_str(literal),
                Segment::Variable(index) => {
                    path.push('{');
                    path.push_str(&self.variables[*index].name);
                    path.push('}');
                }
            }
        }
        if let Some(verb) = &self.verb {
            path.push(':');
            path.push_str(verb);
        }
        path
    }
}

/// A template's path (after its leading '/') and its custom verb: what follows the last segment
/// after a ':' that is not inside a variable.
fn split_verb<'a>(template: &str, rest: &'a str) -> Result<(&'a str, Option<String>), String> {
    let last_slash = rest.rfind('/').map_or(0, |index| index + 1);
    let last_brace = rest.rfind('}').map_or(0, |index| index + 1);
    let (path, verb) = match rest[last_slash.max(last_brace)..].find(':') {
        Some(offset) => {
            let colon = last_slash.max(last_brace) + offset;
            (&rest[..colon], Some(rest[colon + 1..].to_owned()))
        }
        None => (rest, None),
    };
    if verb
        .as_deref()
        .is_some_and(|verb| verb.is_empty() || verb.contains('/'))
    {
        return Err(format!("path template {template:?} has an invalid verb"));
    }
    Ok((path, verb))
}

/// The segments of a template path: split at each '/' outside a `{variable}`, so that a
/// variable with a multi-segment pattern stays whole (and is refused by name).
fn split_segments(path: &str) -> Vec<&str> {
    let mut segments = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (index, character) in path.char_indices() {
        match character {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            '/' if depth == 0 => {
                segments.push(&path[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    segments.push(&path[start..]);
    segments
}

/// A path variable or query parameter must end at one scalar, enum or string-formed
/// well-known type, reached through singular messages.
fn check_scalar_leaf(path: &FieldPath) -> Result<(), String> {
    let Some(leaf) = path.leaf() else {
        return Err("an empty field path".into());
    };
    if leaf.is_list() || leaf.is_map() {
        return Err(format!("path variable {:?} is repeated", path.name));
    }
    match leaf.kind() {
        Kind::Message(message) if !STRING_WELL_KNOWN_TYPES.contains(&message.full_name()) => Err(
            format!("path variable {:?} is a message, not a scalar", path.name),
        ),
        _ => Ok(()),
    }
}

impl PathTemplate {
    /// The template with variable names erased: two routes with the same shape would be
    /// ambiguous.
    pub(super) fn openapi_shape(&self) -> (Vec<Option<&str>>, Option<&str>) {
        (
            self.segments
                .iter()
                .map(|segment| match segment {
                    Segment::Literal(literal) => Some(literal.as_str()),
                    Segment::Variable(_) => None,
                })
                .collect(),
            self.verb.as_deref(),
        )
    }
}
