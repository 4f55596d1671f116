//! `/openapi.json` as client generators read it: every error answer refers to the one
//! `ErrorResponse` component, bodies are components, every `$ref` resolves; and a Python client
//! generated from the served document with openapi-python-client drives a real server.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// The generator version `.ci/run` installs; the test runs with whatever version is installed,
/// but says so when it is another one.
const GENERATOR_VERSION: &str = "0.29.1";

/// With this variable set to 1 a missing generator fails the test instead of skipping it: CI
/// sets it so that the client is really generated there.
const REQUIRE_GENERATOR: &str = "WARMPOOL_TEST_REQUIRE_OPENAPI_CLIENT";

async fn served_document(s: &TestServer) -> String {
    let r = s
        .http
        .get(format!("{}/openapi.json", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// Calls `f` with every value of the document and its JSON pointer.
fn walk<'a>(v: &'a Value, at: &str, f: &mut impl FnMut(&str, &'a Value)) {
    f(at, v);
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                let k = k.replace('~', "~0").replace('/', "~1");
                walk(c, &format!("{at}/{k}"), f);
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                walk(c, &format!("{at}/{i}"), f);
            }
        }
        _ => {}
    }
}

/// The value a local `$ref` points at.
fn resolve<'a>(doc: &'a Value, r: &str) -> Option<&'a Value> {
    doc.pointer(r.strip_prefix('#')?)
}

fn property_names(schema: &Value) -> BTreeSet<String> {
    schema["properties"]
        .as_object()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

const ERROR_REF: &str = "#/components/schemas/ErrorResponse";

#[tokio::test(flavor = "multi_thread")]
async fn every_error_answer_refers_to_the_one_error_shape() {
    let s = TestServer::start(&["--backend", "sim"]);
    let doc: Value = serde_json::from_str(&served_document(&s).await).unwrap();

    let mut dangling = vec![];
    walk(&doc, "", &mut |at, v| {
        if let Some(r) = v.get("$ref").and_then(Value::as_str) {
            if resolve(&doc, r).is_none() {
                dangling.push(format!("{at}: {r}"));
            }
        }
    });
    assert!(
        dangling.is_empty(),
        "$refs that resolve to nothing: {dangling:#?}"
    );

    // Every body, sent or answered, is a component: a generator makes one type of each.
    let mut errors = 0;
    let mut bad = vec![];
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let at = format!("{} {path}", method.to_uppercase());
            if let Some(content) = op["requestBody"]["content"].as_object() {
                for (ct, media) in content {
                    if media["schema"]["$ref"].as_str().is_none() {
                        bad.push(format!("{at}: the {ct} request body is inline"));
                    }
                }
            }
            for (status, response) in op["responses"].as_object().unwrap() {
                // A response may itself be a reusable component.
                let response = match response["$ref"].as_str() {
                    Some(r) => resolve(&doc, r).unwrap(),
                    None => response,
                };
                let content = response["content"].as_object();
                if status.starts_with('2') {
                    for (ct, media) in content.into_iter().flatten() {
                        if media["schema"]["$ref"].as_str().is_none() {
                            bad.push(format!("{at}: the {ct} body of {status} is inline"));
                        }
                    }
                    continue;
                }
                errors += 1;
                let expected = json!({"application/json": {"schema": {"$ref": ERROR_REF}}});
                if response["content"] != expected {
                    bad.push(format!(
                        "{at}: {status} is not a $ref to ErrorResponse: {}",
                        response["content"]
                    ));
                }
            }
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
    // Seven documented errors on each authenticated endpoint, one on /readyz.
    assert!(errors > 100, "only {errors} error answers documented");

    // No inline copy of the error shape anywhere: the two components are the only objects with
    // their sets of properties.
    let schemas = &doc["components"]["schemas"];
    let mut copies = vec![];
    for name in ["ErrorResponse", "ErrorBody"] {
        let own = format!("/components/schemas/{name}");
        let names = property_names(&schemas[name]);
        assert!(!names.is_empty(), "no component {name}");
        walk(&doc, "", &mut |at, v| {
            if v.is_object() && at != own && property_names(v) == names {
                copies.push(format!("{at} copies {name}"));
            }
        });
    }
    assert!(copies.is_empty(), "{copies:#?}");

    // And the component describes what the server sends: an error with details and one without
    // validate against the document's own schema.
    let schema = json!({"$ref": ERROR_REF, "components": doc["components"]});
    let validator = jsonschema::draft202012::new(&schema).unwrap();
    let (st, not_found) = s
        .call("GET", "/v1/projects/proj_0000000000000000", None)
        .await;
    assert_eq!(st, 404, "{not_found}");
    let (st, invalid) = s
        .call("POST", "/v1/projects", Some(json!({"name": ""})))
        .await;
    assert_eq!(st, 422, "{invalid}");
    assert!(invalid["error"]["details"].is_array(), "{invalid}");
    for answer in [not_found, invalid] {
        let errs: Vec<String> = validator
            .iter_errors(&answer)
            .map(|e| format!("{e} at {}", e.instance_path))
            .collect();
        assert!(errs.is_empty(), "{answer} against ErrorResponse: {errs:?}");
    }
}

/// The Python that has openapi-python-client, and its version; or why there is none.
fn generator() -> Result<String, String> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import importlib.metadata as m, openapi_python_client; \
             print(m.version('openapi-python-client'))",
        ])
        .output()
        .map_err(|e| format!("python3 cannot be run ({e})"))?;
    if !out.status.success() {
        return Err("openapi-python-client is not installed for python3".into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs `cmd` to its end within `limit` (killed after), its output kept in `dir`; returns
/// whether it succeeded and its stdout and stderr.
fn run_bounded(mut cmd: Command, dir: &Path, name: &str, limit: Duration) -> (bool, String) {
    let (out_path, err_path) = (
        dir.join(format!("{name}.stdout")),
        dir.join(format!("{name}.stderr")),
    );
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = format!(
        "{}{}{}",
        std::fs::read_to_string(&out_path).unwrap_or_default(),
        std::fs::read_to_string(&err_path).unwrap_or_default(),
        if status.is_none() {
            format!("\n(killed after {} s)", limit.as_secs())
        } else {
            String::new()
        }
    );
    (status.is_some_and(|s| s.success()), output)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_generated_python_client_drives_the_api() {
    let version = match generator() {
        Ok(v) => v,
        Err(why) if std::env::var(REQUIRE_GENERATOR).as_deref() != Ok("1") => {
            // Written to stderr itself, not with eprintln!, which the test harness captures and
            // hides for a test that passes: a skip must show in every run.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED a_generated_python_client_drives_the_api: {why}; install it with \
                 `python3 -m pip install 'openapi-python-client=={GENERATOR_VERSION}'`"
            );
            return;
        }
        Err(why) => panic!("{why}, and {REQUIRE_GENERATOR}=1 requires it"),
    };
    if version != GENERATOR_VERSION {
        eprintln!("openapi-python-client {version} here; CI pins {GENERATOR_VERSION}");
    }
    let started = Instant::now();
    let s = TestServer::start(&["--backend", "sim"]);
    let repo = TestRepo::new(&[("README.md", "a repository for the generated client\n")]);
    let dir = tempfile::Builder::new()
        .prefix("wp-pyclient-")
        .tempdir()
        .unwrap();
    let doc = dir.path().join("openapi.json");
    std::fs::write(&doc, served_document(&s).await).unwrap();
    // No post hooks: they format the code with ruff, and a ruff missing from PATH would be a
    // warning that is not about the document.
    let config = dir.path().join("generator.json");
    std::fs::write(&config, r#"{"post_hooks": []}"#).unwrap();
    let package = dir.path().join("warmpool_client");

    let mut generate = Command::new("python3");
    generate
        .args(["-m", "openapi_python_client", "generate", "--path"])
        .arg(&doc)
        .arg("--output-path")
        .arg(&package)
        .arg("--config")
        .arg(&config)
        // A warning means the generator skipped or misread part of the document.
        .args(["--meta", "none", "--fail-on-warning"]);
    let (ok, output) = run_bounded(generate, dir.path(), "generate", Duration::from_secs(300));
    assert!(
        ok,
        "openapi-python-client failed on /openapi.json:\n{output}"
    );
    assert!(!output.contains("Warning"), "generator warnings:\n{output}");

    let models: Vec<String> = std::fs::read_dir(package.join("models"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".py") && n != "__init__.py")
        .collect();
    eprintln!("the generated client has {} models", models.len());
    // A model per endpoint and status is an inline copy of a response body.
    let copies: Vec<&String> = models
        .iter()
        .filter(|n| {
            n.rsplit_once("_response_").is_some_and(|(_, status)| {
                status
                    .trim_end_matches(".py")
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            })
        })
        .collect();
    assert!(copies.is_empty(), "per-response models: {copies:?}");

    let mut drive = Command::new("python3");
    drive
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openapi_client/drive.py"))
        .env("PYTHONPATH", dir.path())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("WARMPOOL_URL", &s.url)
        .env("WARMPOOL_TOKEN", &s.token)
        .env("REPO_URL", repo.url());
    let (ok, output) = run_bounded(drive, dir.path(), "drive", Duration::from_secs(300));
    assert!(
        ok,
        "the generated client's run failed:\n{output}\nserver log:\n{}",
        s.log_text()
    );
    assert!(output.contains("drive: done"), "{output}");
    eprintln!(
        "generated and drove the client in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
