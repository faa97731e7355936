//! Argo CD's view of a StreamJob: the health check of `examples/gitops/argocd/argocd-cm.yaml`,
//! run by a Lua 5.1 interpreter (`lua5.1`, the dialect of Argo CD's gopher-lua) as Argo CD runs
//! it: the object as the global table `obj`, the script's returned table as the verdict.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::repo_dir;

/// The health check's Lua source, from the argocd-cm example.
pub fn health_script() -> String {
    let path = repo_dir().join("examples/gitops/argocd/argocd-cm.yaml");
    let cm: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    cm["data"]["resource.customizations.health.weir.dev_StreamJob"].as_str().unwrap().to_string()
}

/// `v` as a Lua expression (objects and arrays as tables, arrays 1-based, null as nil).
fn lua(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let escaped: String = s
                .bytes()
                .map(|b| match b {
                    b'\\' => "\\\\".to_string(),
                    b'"' => "\\\"".to_string(),
                    b' '..=b'~' => (b as char).to_string(),
                    _ => format!("\\{b:03}"),
                })
                .collect();
            format!("\"{escaped}\"")
        }
        Value::Array(items) => format!("{{{}}}", items.iter().map(lua).collect::<Vec<_>>().join(", ")),
        Value::Object(fields) => {
            let entries: Vec<String> =
                fields.iter().map(|(k, v)| format!("[{}] = {}", lua(&Value::String(k.clone())), lua(v))).collect();
            format!("{{{}}}", entries.join(", "))
        }
    }
}

/// Argo CD's verdict on the StreamJob `obj`: its health status and message.
pub fn argocd_health(obj: &Value) -> (String, String) {
    let program = format!(
        "obj = {}\nlocal hs = (function()\n{}\nend)()\nio.write(hs.status, \"\\n\", hs.message or \"\")\n",
        lua(obj),
        health_script()
    );
    let mut child = Command::new("lua5.1")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lua5.1 (scripts/install-deps.sh installs it)");
    child.stdin.take().unwrap().write_all(program.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the health check failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let (status, message) = text.split_once('\n').unwrap_or((&text, ""));
    (status.to_string(), message.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_becomes_lua_tables() {
        let v = serde_json::json!({"a": [1, "x\"y\n"], "b": null, "c": true});
        assert_eq!(lua(&v), r#"{["a"] = {1, "x\"y\010"}, ["b"] = nil, ["c"] = true}"#);
    }
}
