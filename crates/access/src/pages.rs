//! The gateway's own pages: plain HTML forms, no JavaScript, so scripts and tests can drive them.

const STYLE: &str = "body{font:16px/1.5 system-ui,sans-serif;max-width:24rem;margin:5rem auto;padding:0 1rem;color:#1d1d1f}\
h1{font-size:1.4rem;margin-bottom:1.5rem}label{display:block;margin:.8rem 0 .2rem;font-weight:600}\
input{width:100%;box-sizing:border-box;padding:.55rem;border:1px solid #bbb;border-radius:6px;font:inherit}\
button{margin-top:1.2rem;width:100%;padding:.6rem;border:0;border-radius:6px;background:#1d4ed8;color:#fff;font:inherit;cursor:pointer}\
.error{background:#fde8e8;color:#9b1c1c;padding:.6rem;border-radius:6px}";

/// Escapes text for HTML.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The sign-in form (fields `email`, `password`, `redirect_uri`).
pub fn sign_in(redirect: &str, error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
<title>Sign in · Postern</title><style>{STYLE}</style></head><body><h1>Sign in</h1>{error}\
<form method=\"post\" action=\"/.pomerium/sign_in\"><input type=\"hidden\" name=\"redirect_uri\" value=\"{redirect}\">\
<label for=\"email\">Email</label><input id=\"email\" name=\"email\" type=\"email\" autocomplete=\"username\" required autofocus>\
<label for=\"password\">Password</label><input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\
<button type=\"submit\">Sign in</button></form></body></html>",
        redirect = escape(redirect),
    )
}

/// After sign-out.
pub fn signed_out() -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Signed out · Postern</title><style>{STYLE}</style></head>\
<body><h1>You are signed out</h1><p><a href=\"/.pomerium/sign_in\">Sign in again</a></p></body></html>"
    )
}

/// A short page with a title and a message.
pub fn message(title: &str, text: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title} · Postern</title><style>{STYLE}</style></head>\
<body><h1>{title}</h1><p>{text}</p><p><a href=\"/.pomerium/sign_in\">Sign in</a></p></body></html>",
        title = escape(title),
        text = escape(text),
    )
}

/// The consent page: approve (`decision=allow`) or deny (`decision=deny`) an MCP client's access
/// to a server; the original authorization parameters travel as hidden fields.
pub fn consent(
    client: &str,
    server: &str,
    user: &str,
    params: &std::collections::HashMap<String, String>,
    binding: &str,
) -> String {
    let mut hidden = String::new();
    let mut pairs: Vec<_> = params
        .iter()
        .filter(|(k, _)| k.as_str() != "session_binding")
        .collect();
    pairs.sort();
    for (name, value) in pairs {
        hidden.push_str(&format!(
            "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
            escape(name),
            escape(value)
        ));
    }
    hidden.push_str(&format!(
        "<input type=\"hidden\" name=\"session_binding\" value=\"{}\">",
        escape(binding)
    ));
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
<title>Allow access · Postern</title><style>{STYLE} .deny{{background:#e5e7eb;color:#111}}</style></head><body>\
<h1>Allow {client} to use {server}?</h1><p>Signed in as <strong>{user}</strong>. {client} will be able to call the tools of \
<strong>{server}</strong> as you, until you sign out or revoke it.</p>\
<form method=\"post\" action=\"/.pomerium/mcp/authorize\">{hidden}\
<button type=\"submit\" name=\"decision\" value=\"allow\">Allow</button>\
<button type=\"submit\" name=\"decision\" value=\"deny\" class=\"deny\">Deny</button></form></body></html>",
        client = escape(client),
        server = escape(server),
        user = escape(user),
    )
}
