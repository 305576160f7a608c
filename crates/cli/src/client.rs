//! Client commands over a node's HTTP API: `doc get|edit|watch|list` and
//! `status`, and the HTTP helpers `export`/`import` share.

use std::io::{BufRead, BufReader, Write};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

/// Which node to talk to, and how to print.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct Target {
    /// The node's base URL.
    #[arg(
        long,
        env = "CONVERGE_URL",
        default_value = "http://127.0.0.1:7878",
        global = true
    )]
    pub(crate) url: String,
    /// Print JSON for scripts instead of a human-readable form.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

impl Target {
    /// `url` without a trailing slash, joined with `path`.
    pub(crate) fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url.trim_end_matches('/'))
    }
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum DocCommand {
    /// Print a document.
    Get {
        /// Document id.
        id: String,
    },
    /// Apply changes (a JSON array, see the HTTP API) to a document.
    Edit {
        /// Document id.
        id: String,
        /// The changes, e.g. '[{"op":"set","path":["title"],"value":"hi"}]'.
        changes: String,
    },
    /// Print a document's changes as they happen, until Ctrl-C.
    ///
    /// One line per patch: `PATH put KEY = VALUE`, `PATH delete KEY`,
    /// `PATH insert [I] = VALUE`, `PATH remove [I]` or `PATH increment +N`;
    /// with --json, one JSON object per line, as the node sends them:
    /// `{"path":[...],"action":{"action":"put","key":...,"value":...}}`.
    Watch {
        /// Document id.
        id: String,
    },
    /// List documents: every one, page by page, unless --limit is given.
    List {
        /// Only ids starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// List at most this many.
        #[arg(long)]
        limit: Option<usize>,
        /// Ids asked for per page (tests use a small page to cover paging).
        #[arg(long, default_value_t = LIST_PAGE, hide = true)]
        list_page: usize,
    },
}

/// Ids asked for per page when listing (the node's largest page).
pub(crate) const LIST_PAGE: usize = 1000;

/// Writes one line to standard output (see the `outln!` macro).
///
/// A closed pipe means the reader went away, as with `converge doc list |
/// head`: a normal way to stop, so the process exits quietly with status
/// 0, where `println!` would panic.
pub(crate) fn print_line(line: std::fmt::Arguments<'_>) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}") {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => Err(e).context("writing to standard output"),
    }
}

/// Lists the ids starting with `prefix`, at most `limit` of them (all if
/// `None`), following the node's paging `page` ids at a time; `each` gets
/// every page as it arrives.
pub(crate) fn list_pages(
    target: &Target,
    prefix: &str,
    page: usize,
    limit: Option<usize>,
    mut each: impl FnMut(&[String]) -> Result<()>,
) -> Result<()> {
    let page = page.clamp(1, LIST_PAGE);
    let mut left = limit.unwrap_or(usize::MAX);
    let mut after: Option<String> = None;
    while left > 0 {
        let mut url = target.at(&format!(
            "/v1/docs?prefix={}&limit={}",
            encode_id(prefix),
            page.min(left)
        ));
        if let Some(a) = &after {
            url.push_str(&format!("&after={}", encode_id(a)));
        }
        let body = get_json(&url)?;
        let Some(list) = body["docs"].as_array() else {
            bail!("GET {url}: the answer has no `docs` list");
        };
        let ids: Vec<String> = list
            .iter()
            .filter_map(Value::as_str)
            .map(String::from)
            .take(left)
            .collect();
        left -= ids.len();
        each(&ids)?;
        match body["next_after"].as_str() {
            Some(next) if !ids.is_empty() => after = Some(next.to_string()),
            _ => break,
        }
    }
    Ok(())
}

/// An HTTP agent that hands back error statuses as answers (the node
/// explains them in its JSON body).
pub(crate) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(std::time::Duration::from_secs(10)))
        .build()
        .into()
}

/// Percent-encodes a document id for a URL path segment.
pub(crate) fn encode_id(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Says what failed when the node cannot be reached at all.
pub(crate) fn unreachable(what: &str, e: ureq::Error) -> anyhow::Error {
    match e {
        ureq::Error::Io(_) | ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => anyhow!(
            "{what}: cannot reach the node ({e}); is `converge serve` running there? (set --url or CONVERGE_URL)"
        ),
        e => anyhow!("{what}: {e}"),
    }
}

/// GETs `url` and returns its JSON answer.
pub(crate) fn get_json(url: &str) -> Result<Value> {
    let what = format!("GET {url}");
    let resp = agent().get(url).call().map_err(|e| unreachable(&what, e))?;
    answer(resp, &what)
}

/// The JSON body of a node's answer, or its error message as an error.
pub(crate) fn answer(mut resp: ureq::http::Response<ureq::Body>, what: &str) -> Result<Value> {
    let status = resp.status();
    let body: Value = resp
        .body_mut()
        .read_json()
        .with_context(|| format!("reading the answer of {what}"))?;
    if !status.is_success() {
        bail!(
            "{what}: {status}: {}",
            body["error"]["message"]
                .as_str()
                .unwrap_or("request failed")
        );
    }
    Ok(body)
}

/// `converge status`.
pub(crate) fn status(target: &Target) -> Result<()> {
    let status = get_json(&target.at("/v1/status"))?;
    if target.json {
        return outln!("{status}");
    }
    outln!("replica   {}", status["replica"].as_str().unwrap_or("?"))?;
    outln!("open docs {}", status["open_docs"])?;
    outln!("feed head {}", status["feed_head"])?;
    let sync = &status["sync"];
    outln!("sessions  {} incoming", sync["incoming_sessions"])?;
    for p in sync["peers"].as_array().into_iter().flatten() {
        let state = if p["connected"] == true {
            "connected"
        } else {
            "down"
        };
        let error = match p["last_error"].as_str() {
            Some(e) if p["connected"] != true => format!(" ({e})"),
            _ => String::new(),
        };
        outln!(
            "peer      {} {state}, feed position {}{error}",
            p["url"].as_str().unwrap_or("?"),
            p["feed_position"]
        )?;
    }
    let membership = &status["membership"];
    if membership["gossip"] == true {
        outln!(
            "gossip    every {} ms, {} session(s) open",
            membership["interval_ms"],
            membership["gossip_sessions"]
        )?;
    }
    for m in membership["members"].as_array().into_iter().flatten() {
        outln!("member    {}", member_line(m))?;
    }
    if let Some(n) = membership["forgotten"].as_u64().filter(|&n| n > 0) {
        outln!("forgotten {n} member(s) dead longer than the forget-after time")?;
    }
    Ok(())
}

/// One member of `/v1/status` as `converge status` prints it: replica,
/// state, URL, then lag and backoff when they say something.
fn member_line(m: &Value) -> String {
    let mut line = format!(
        "{} {} {}",
        m["replica"].as_str().unwrap_or("?"),
        m["state"].as_str().unwrap_or("?"),
        m["url"].as_str().unwrap_or("(no url)")
    );
    match m["lag_ms"].as_u64() {
        Some(0) => {}
        Some(lag) => line.push_str(&format!(", lag {lag} ms")),
        None if m["state"] != "local" => line.push_str(", never seen"),
        None => {}
    }
    if let Some(n) = m["failures"].as_u64().filter(|&n| n > 0) {
        line.push_str(&format!(", {n} failure(s)"));
    }
    if let Some(ms) = m["retry_in_ms"].as_u64() {
        line.push_str(&format!(", retry in {ms} ms"));
    }
    if let Some(other) = m["answered_as"].as_str() {
        line.push_str(&format!(", its URL answered as {other}"));
    }
    line
}

/// `converge doc ...`.
pub(crate) fn doc(target: &Target, command: DocCommand) -> Result<()> {
    match command {
        DocCommand::Get { id } => {
            let body = get_json(&target.at(&format!("/v1/docs/{}", encode_id(&id))))?;
            if target.json {
                outln!("{body}")?;
            } else {
                outln!("{}", serde_json::to_string_pretty(&body)?)?;
            }
        }
        DocCommand::Edit { id, changes } => {
            let parsed: Value =
                serde_json::from_str(&changes).context("the changes are not valid JSON")?;
            let url = target.at(&format!("/v1/docs/{}/changes", encode_id(&id)));
            let what = format!("POST {url}");
            let resp = agent()
                .post(&url)
                .send_json(&parsed)
                .map_err(|e| unreachable(&what, e))?;
            let body = answer(resp, &what)?;
            if target.json {
                outln!("{body}")?;
            } else {
                outln!("applied; version {}", body["version"])?;
            }
        }
        DocCommand::Watch { id } => watch(target, &id)?,
        DocCommand::List {
            prefix,
            limit,
            list_page,
        } => {
            let mut all = Vec::new();
            list_pages(target, &prefix, list_page, limit, |ids| {
                if target.json {
                    all.extend_from_slice(ids);
                    return Ok(());
                }
                // Printed as pages arrive, so `| head` stops the paging early.
                ids.iter().try_for_each(|id| outln!("{id}"))
            })?;
            if target.json {
                outln!("{}", serde_json::json!({ "docs": all }))?;
            }
        }
    }
    Ok(())
}

/// `converge doc watch`: follows the node's server-sent events and prints
/// each patch until Ctrl-C (exit 0) or the node ends the stream (an error).
fn watch(target: &Target, id: &str) -> Result<()> {
    exit_on_ctrl_c();
    let url = target.at(&format!("/v1/docs/{}/watch", encode_id(id)));
    let what = format!("GET {url}");
    let resp = agent()
        .get(&url)
        .header("accept", "text/event-stream")
        .call()
        .map_err(|e| unreachable(&what, e))?;
    if !resp.status().is_success() {
        // An unknown document and the like: the node explains in JSON.
        answer(resp, &what)?;
        bail!("{what}: the node refused to stream");
    }
    if !target.json {
        eprintln!("watching {id} on {} (Ctrl-C to stop)", target.url);
    }
    let reader = BufReader::new(resp.into_body().into_reader());
    // An event's data lines, joined (the node sends one line per event).
    let mut data = String::new();
    for line in reader.lines() {
        let line = line.with_context(|| format!("{what}: the stream broke"))?;
        if let Some(rest) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(rest.strip_prefix(' ').unwrap_or(rest));
        } else if line.is_empty() && !data.is_empty() {
            print_patches(&std::mem::take(&mut data), target.json)?;
        }
        // Comments (keep-alives) and `event:` lines carry nothing to print.
    }
    bail!("the node ended the stream (it is shutting down, or the document was deleted)")
}

/// Prints one event's batch of patches.
fn print_patches(data: &str, json: bool) -> Result<()> {
    let patches: Vec<Value> =
        serde_json::from_str(data).with_context(|| format!("the node sent {data:?}"))?;
    for p in &patches {
        if json {
            outln!("{p}")?;
        } else {
            outln!("{}", human_patch(p))?;
        }
    }
    Ok(())
}

/// `todos/0 put done = true`, `notes insert [3] = "x"`, `/ remove [2]`...
fn human_patch(p: &Value) -> String {
    let path = match p["path"].as_array() {
        Some(segs) if !segs.is_empty() => segs
            .iter()
            .map(|s| match s {
                Value::String(k) => k.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join("/"),
        _ => "/".to_string(),
    };
    // The node sends `{"path": [...], "action": {"action": "put", ...}}`.
    let p = &p["action"];
    match p["action"].as_str().unwrap_or("?") {
        "put" if p["value"].is_null() => {
            format!("{path} delete {}", p["key"].as_str().unwrap_or("?"))
        }
        "put" => format!(
            "{path} put {} = {}",
            p["key"].as_str().unwrap_or("?"),
            p["value"]
        ),
        "insert" => format!("{path} insert [{}] = {}", p["index"], p["value"]),
        "remove" => format!("{path} remove [{}]", p["index"]),
        "increment" => match p["by"].as_i64() {
            Some(by) if by >= 0 => format!("{path} increment +{by}"),
            Some(by) => format!("{path} increment {by}"),
            None => format!("{path} increment {}", p["by"]),
        },
        other => format!("{path} {other} {p}"),
    }
}

/// Ctrl-C (or SIGTERM) while following a stream is the normal way out:
/// exit 0. Standard output is line-buffered, so every printed line is out.
fn exit_on_ctrl_c() {
    std::thread::spawn(|| {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(crate::serve::stop_signal());
        std::process::exit(0);
    });
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn ids_are_escaped_for_urls() {
        assert_eq!(encode_id("notes-1.b_c~"), "notes-1.b_c~");
        assert_eq!(encode_id("a/b c?é"), "a%2Fb%20c%3F%C3%A9");
    }

    #[test]
    fn patches_read_well() {
        let cases = [
            (
                json!({"path":["todos",0],"action":{"action":"put","key":"done","value":true}}),
                "todos/0 put done = true",
            ),
            (
                json!({"path":[],"action":{"action":"put","key":"gone","value":null}}),
                "/ delete gone",
            ),
            (
                json!({"path":["notes"],"action":{"action":"insert","index":3,"value":"x"}}),
                "notes insert [3] = \"x\"",
            ),
            (
                json!({"path":["todos"],"action":{"action":"remove","index":1}}),
                "todos remove [1]",
            ),
            (
                json!({"path":["n"],"action":{"action":"increment","by":-2}}),
                "n increment -2",
            ),
            (
                json!({"path":["n"],"action":{"action":"increment","by":5}}),
                "n increment +5",
            ),
        ];
        for (patch, text) in cases {
            assert_eq!(human_patch(&patch), text);
        }
    }

    #[test]
    fn member_lines_show_a_mismatch_and_a_left_member() {
        let m = json!({"replica": "00000000000000aa", "state": "mismatch",
            "url": "ws://h:1/v1/sync", "lag_ms": 500, "failures": 1,
            "retry_in_ms": 700, "answered_as": "00000000000000bb"});
        assert_eq!(
            member_line(&m),
            "00000000000000aa mismatch ws://h:1/v1/sync, lag 500 ms, 1 failure(s), \
             retry in 700 ms, its URL answered as 00000000000000bb"
        );
        let m = json!({"replica": "00000000000000aa", "state": "left",
            "url": "ws://h:1/v1/sync", "lag_ms": 20, "failures": 0,
            "retry_in_ms": null, "answered_as": null});
        assert_eq!(
            member_line(&m),
            "00000000000000aa left ws://h:1/v1/sync, lag 20 ms"
        );
    }
}
