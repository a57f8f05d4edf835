//! The README, kept from rotting: its first session runs as written against the real binary, its
//! Quick start names commands that exist, and every link and spec citation of the docs resolves.
//!
//! The blocks meant to run carry `<!-- readme-test: walkthrough -->` on the line before their
//! fence; the others are prose. In a block, a line starting with `$ ` is a command (continued
//! while a line ends in `\` or a quote is open), and the lines after it are what it shows: each
//! shown line's parts between `...` must be in what the command printed. The commands run in
//! order in one bash (variables such as `ID` carry over), with `KEY` the key the service printed
//! on its first start, and `localhost:8080` / `localhost:50051` rewritten to the test service's
//! ports, the only change made to them.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;

/// The marker of the README's runnable first session.
const WALKTHROUGH: &str = "walkthrough";
/// The marker of the block showing what the first start prints.
const FIRST_KEY: &str = "first-key";
/// The addresses the README's commands use, as `scripts/run` listens by default.
const README_HTTP: &str = "localhost:8080";
const README_GRPC: &str = "localhost:50051";
/// The whole session, every command included.
const SESSION_TIMEOUT: Duration = Duration::from_secs(120);
/// The contract and design documents the code cites, under docs/spec/.
const SPECS: [&str; 4] = ["api", "onboarding", "streaming", "architecture"];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()))
}

fn readme() -> String {
    read(&repo().join("README.md"))
}

// ------------------------------------------------------------------------------------------------
// The README's blocks and commands
// ------------------------------------------------------------------------------------------------

/// The lines of every fenced block that `<!-- readme-test: NAME -->` marks, in order.
fn marked_blocks(text: &str, name: &str) -> Vec<Vec<String>> {
    let marker = format!("<!-- readme-test: {name} -->");
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    for (at, line) in lines.iter().enumerate() {
        if line.trim() != marker {
            continue;
        }
        let fence = lines.get(at + 1).copied().unwrap_or_default();
        assert!(
            fence.starts_with("```"),
            "README line {}: {marker} is not followed by a fenced block but by {fence:?}",
            at + 1
        );
        let body: Vec<String> = lines[at + 2..]
            .iter()
            .take_while(|line| !line.starts_with("```"))
            .map(|line| line.to_string())
            .collect();
        blocks.push(body);
    }
    blocks
}

/// One command of a walkthrough block and the lines shown after it.
#[derive(Debug)]
struct Step {
    command: String,
    shown: Vec<String>,
}

/// Whether bash would read more lines for `command`: a trailing `\` or an open quote (comments
/// skipped, so an apostrophe in one opens nothing).
fn incomplete(command: &str) -> bool {
    let (mut single, mut double, mut escaped, mut comment) = (false, false, false, false);
    let mut previous = '\n';
    for c in command.chars() {
        if comment {
            comment = c != '\n';
        } else if escaped {
            escaped = false;
        } else if single {
            single = c != '\'';
        } else if c == '\\' {
            escaped = true;
        } else if double {
            double = c != '"';
        } else if c == '\'' {
            single = true;
        } else if c == '"' {
            double = true;
        } else if c == '#' && previous.is_whitespace() {
            comment = true;
        }
        previous = c;
    }
    single || double || escaped
}

/// The commands of `blocks`, in order, each with what it shows.
fn steps(blocks: &[Vec<String>]) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    for block in blocks {
        let mut lines = block.iter();
        let mut in_block = 0;
        while let Some(line) = lines.next() {
            if let Some(command) = line.strip_prefix("$ ") {
                let mut command = command.to_owned();
                while incomplete(&command) {
                    let next = lines
                        .next()
                        .unwrap_or_else(|| panic!("the block ends inside {command:?}"));
                    command.push('\n');
                    command.push_str(next);
                }
                steps.push(Step {
                    command,
                    shown: Vec::new(),
                });
                in_block += 1;
            } else {
                assert!(
                    in_block > 0,
                    "a walkthrough block shows {line:?} before any `$ ` command"
                );
                steps
                    .last_mut()
                    .expect("a command")
                    .shown
                    .push(line.clone());
            }
        }
    }
    steps
}

/// The parts of a shown line that the real output must contain: the text between `...`.
fn shown_parts(line: &str) -> impl Iterator<Item = &str> {
    line.split("...")
        .map(str::trim)
        .filter(|part| !part.is_empty())
}

/// The first API key in `text`.
fn find_key(text: &str) -> Option<String> {
    let start = text.find("dbt_")?;
    let key: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    (key.len() > "dbt_".len() + 16).then_some(key)
}

#[test]
fn the_readme_blocks_parse_into_commands_and_what_they_show() {
    let blocks = vec![vec![
        "$ jq -n '{a: 1,".to_owned(),
        "    b: 2}' > x.json   # don't".to_owned(),
        "$ curl -s x \\".to_owned(),
        "    -d y".to_owned(),
        "{\"id\":\"...\",\"status\":\"pending\"}".to_owned(),
        "...".to_owned(),
    ]];
    let steps = steps(&blocks);
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert_eq!(
        steps[0].command,
        "jq -n '{a: 1,\n    b: 2}' > x.json   # don't"
    );
    assert!(steps[0].shown.is_empty());
    assert_eq!(steps[1].command, "curl -s x \\\n    -d y");
    let parts: Vec<&str> = steps[1].shown.iter().flat_map(|l| shown_parts(l)).collect();
    assert_eq!(parts, ["{\"id\":\"", "\",\"status\":\"pending\"}"]);
}

// ------------------------------------------------------------------------------------------------
// The first session, run as written
// ------------------------------------------------------------------------------------------------

/// The README's first session (curl and grpcurl: register an SSH-tunnel server, watch it reach
/// awaiting_firewall, read it over both surfaces, list, relabel, decommission) against the real
/// binary on an empty database, with the key its first start prints, as `scripts/run` shows it.
#[test]
fn the_first_session_works_as_written() {
    block_on(async {
        let text = readme();
        let steps = steps(&marked_blocks(&text, WALKTHROUGH));
        assert!(
            steps.len() >= 8,
            "the README's first session is gone: {steps:?}"
        );
        let all: String = steps.iter().map(|step| step.command.as_str()).collect();
        for address in [README_HTTP, README_GRPC] {
            assert!(
                all.contains(address),
                "no command of the session calls {address}"
            );
        }

        // The service as `scripts/run` starts it (the target policy on), on an empty database.
        let db = Arc::new(TestDatabase::create().await);
        let options = ReplicaOptions {
            allow_loopback_targets: false,
            ..ReplicaOptions::default()
        };
        let service = ServiceProcess::serve("readme", &db.url, &options).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let key = loop {
            if let Some(key) = find_key(&service.stdout()) {
                break key;
            }
            assert!(
                Instant::now() < deadline,
                "the first start printed no key:\n{}",
                service.stdout()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // What the README says the first start prints, it prints.
        let first_key = marked_blocks(&text, FIRST_KEY);
        let announced = first_key
            .first()
            .and_then(|block| block.first())
            .expect("the README shows what the first start prints");
        assert!(
            service.stdout().contains(announced.as_str()),
            "the first start did not print {announced:?}:\n{}",
            service.stdout()
        );

        // One bash runs every command in order, as a person would type them; each one's output
        // and exit status go to files of its own. The first failure stops the session.
        let dir = tempfile::tempdir().expect("a directory for the session");
        let http = service.http_addr.to_string();
        let grpc = service.grpc_addr.to_string();
        let mut script = String::new();
        for (index, step) in steps.iter().enumerate() {
            let command = step
                .command
                .replace(README_HTTP, &http)
                .replace(README_GRPC, &grpc);
            assert!(
                !command.contains("localhost"),
                "a command calls an address the test does not rewrite: {command}"
            );
            script.push_str(&format!(
                "{{ {command}\n}} >{index}.out 2>{index}.err </dev/null\n\
                 status=$?\necho $status >{index}.status\n[ $status = 0 ] || exit 0\n"
            ));
        }
        let script_path = dir.path().join("session.sh");
        std::fs::write(&script_path, &script).expect("write the session");
        let run = tokio::process::Command::new("bash")
            .args(["--noprofile", "--norc"])
            .arg(&script_path)
            .current_dir(dir.path())
            .env("KEY", &key)
            .env_remove("ID")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(SESSION_TIMEOUT, run)
            .await
            .unwrap_or_else(|_| panic!("the session did not end within {SESSION_TIMEOUT:?}"))
            .expect("run bash (and curl, jq, ssh-keygen, grpcurl: scripts/test installs them)");
        echo_output(&output);

        for (index, step) in steps.iter().enumerate() {
            let file = |extension: &str| dir.path().join(format!("{index}.{extension}"));
            let status = std::fs::read_to_string(file("status"))
                .unwrap_or_else(|_| panic!("`{}` never ran", step.command));
            let stdout = read(&file("out"));
            let stderr = read(&file("err"));
            eprintln!(
                "$ {}\n{stdout}{stderr}[exit {}]",
                step.command,
                status.trim()
            );
            assert_eq!(
                status.trim(),
                "0",
                "`{}` failed\nstdout:\n{stdout}\nstderr:\n{stderr}\nthe service:\n{}",
                step.command,
                service.stderr()
            );
            for line in &step.shown {
                for part in shown_parts(line) {
                    assert!(
                        stdout.contains(part),
                        "`{}` shows {line:?} in the README, but printed:\n{stdout}",
                        step.command
                    );
                }
            }
        }
        drop(service);
    });
}

// ------------------------------------------------------------------------------------------------
// Quick start, links and citations
// ------------------------------------------------------------------------------------------------

/// The text of the README's section `heading` (to the next `## `).
fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let start = text
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("the README has no section {heading:?}"));
    let rest = &text[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |end| end + 3);
    &rest[..end]
}

/// Quick start names the demo and the two commands; each is an executable script, the demo has
/// its own test (tests/api/demo.rs runs it), and CI runs exactly `scripts/test`.
#[test]
fn quick_start_names_the_demo_and_the_two_commands() {
    let text = readme();
    let quick_start = section(&text, "Quick start");
    for script in ["scripts/demo", "scripts/run", "scripts/test"] {
        assert!(
            quick_start.contains(script),
            "Quick start does not name {script}"
        );
        let path = repo().join(script);
        let mode = std::fs::metadata(&path)
            .unwrap_or_else(|error| panic!("{script}: {error}"))
            .permissions()
            .mode();
        assert!(mode & 0o111 != 0, "{script} is not executable ({mode:o})");
    }
    assert!(repo().join("tests/api/demo.rs").is_file());
    let ci = read(&repo().join(".ci/run"));
    assert!(
        ci.lines()
            .any(|line| line.trim() == r#"exec scripts/test "$@""#),
        ".ci/run does not run exactly scripts/test:\n{ci}"
    );
}

/// The anchors GitHub gives a Markdown file's headings: lower case, punctuation dropped, spaces
/// as `-`, a repeated one numbered.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut anchors = BTreeSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        }
        let heading = line.trim_start_matches('#');
        if fenced || heading.len() == line.len() || !heading.starts_with(' ') {
            continue;
        }
        let slug: String = heading
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let count = seen.entry(slug.clone()).or_default();
        anchors.insert(match *count {
            0 => slug.clone(),
            n => format!("{slug}-{n}"),
        });
        *count += 1;
    }
    anchors
}

/// The relative link targets of a Markdown text, outside code blocks and code spans.
fn relative_links(text: &str) -> Vec<String> {
    let mut links = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        }
        if fenced {
            continue;
        }
        for prose in line.split('`').step_by(2) {
            let mut rest = prose;
            while let Some(at) = rest.find("](") {
                rest = &rest[at + 2..];
                let target = &rest[..rest.find(')').unwrap_or(rest.len())];
                if !target.contains("://") && !target.starts_with("mailto:") {
                    links.push(target.to_owned());
                }
            }
        }
    }
    links
}

/// `path` with `.` and `..` resolved, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                normal.pop();
            }
            Component::CurDir => {}
            other => normal.push(other),
        }
    }
    normal
}

/// Every Markdown file of the docs: the README and docs/, spec included.
fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![repo().join("README.md")];
    files.extend(files_under(&repo().join("docs")));
    files.retain(|file| file.extension().is_some_and(|extension| extension == "md"));
    files
}

/// Every file under `dir`, build output and dependencies left out.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if matches!(name.to_str(), Some("target" | "node_modules" | ".git")) {
                continue;
            }
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Every link between the README and docs/ reaches a file that exists and, with a `#`, one of
/// its headings.
#[test]
fn every_link_of_the_docs_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in markdown_files() {
        let text = read(&file);
        for link in relative_links(&text) {
            checked += 1;
            let (path, anchor) = link.split_once('#').unwrap_or((&link, ""));
            let target = if path.is_empty() {
                file.clone()
            } else {
                normalize(&file.parent().expect("a file's directory").join(path))
            };
            let shown = file.strip_prefix(repo()).unwrap_or(&file).display();
            if !target.exists() {
                broken.push(format!("{shown}: ({link}): no such file"));
            } else if !anchor.is_empty() && !anchors(&read(&target)).contains(anchor) {
                broken.push(format!("{shown}: ({link}): no such heading"));
            }
        }
    }
    assert!(checked > 20, "only {checked} links found");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The section numbers a text cites of spec `name` (`api.md §5`, `` `streaming.md` §2, §4 ``).
fn citations(text: &str, name: &str) -> Vec<u32> {
    let file = format!("{name}.md");
    let mut cited = Vec::new();
    for (at, _) in text.match_indices(&file) {
        let mut rest = text[at + file.len()..].trim_start_matches('`');
        while let Some(after) = rest.strip_prefix(" §").or_else(|| rest.strip_prefix(", §")) {
            let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
            let Ok(section) = digits.parse() else { break };
            cited.push(section);
            rest = &after[digits.len()..];
        }
    }
    cited
}

/// Every `§N` that the code, tests, migrations, scripts and docs cite of a spec is a numbered
/// section of that spec in docs/spec/.
#[test]
fn every_cited_spec_section_exists() {
    let sections: BTreeMap<&str, String> = SPECS
        .iter()
        .map(|name| (*name, read(&repo().join(format!("docs/spec/{name}.md")))))
        .collect();
    let mut files = vec![repo().join("README.md")];
    for dir in [
        "src",
        "tests",
        "migrations",
        "migrations_index",
        "proto",
        "scripts",
        "benches",
        "examples",
        "docs",
    ] {
        files.extend(files_under(&repo().join(dir)));
    }
    let mut missing = Vec::new();
    let mut checked = 0;
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue; // not text
        };
        let shown = file
            .strip_prefix(repo())
            .unwrap_or(&file)
            .display()
            .to_string();
        for (name, spec) in &sections {
            for section in citations(&text, name) {
                checked += 1;
                if !spec
                    .lines()
                    .any(|line| line.starts_with(&format!("## {section}. ")))
                {
                    missing.push(format!("{shown}: {name}.md §{section}"));
                }
            }
        }
    }
    assert!(checked > 20, "only {checked} citations found");
    assert!(
        missing.is_empty(),
        "cited sections that do not exist:\n{}",
        missing.join("\n")
    );
}
