//! The gateway's own pages: plain HTML forms, no JavaScript, so scripts and tests can drive them.

const STYLE: &str = "body{font:16px/1.5 system-ui,sans-serif;max-width:24rem;margin:5rem auto;padding:0 1rem;color:#1d1d1f}\
h1{font-size:1.4rem;margin-bottom:1.5rem}label{display:block;margin:.8rem 0 .2rem;font-weight:600}\
input{width:100%;box-sizing:border-box;padding:.55rem;border:1px solid #bbb;border-radius:6px;font:inherit}\
button{margin-top:1.2rem;width:100%;padding:.6rem;border:0;border-radius:6px;background:#1d4ed8;color:#fff;font:inherit;cursor:pointer}\
.error{background:#fde8e8;color:#9b1c1c;padding:.6rem;border-radius:6px}";

/// Escapes text for HTML (the gateway's one escape).
pub use postern_gateway::html::escape;

/// Where a page is shown: the gateway's origin (named on the page, so a user can tell which
/// gateway asks for their password) and the email to start the sign-in form with.
pub struct Site<'a> {
    /// This request's origin, e.g. `http://localhost:8080`.
    pub host: &'a str,
    /// The email filled in (`postern up`'s generated user).
    pub email: Option<&'a str>,
}

/// The sign-in form (fields `email`, `password`, `redirect_uri`, and the anti-forgery
/// `csrf_token` that goes with the browser's `_postern_csrf` cookie).
pub fn sign_in(site: &Site<'_>, redirect: &str, csrf: &str, error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    // With the email known, the cursor goes to the password.
    let (email_value, email_focus, password_focus) = match site.email {
        Some(email) => (format!(" value=\"{}\"", escape(email)), "", " autofocus"),
        None => (String::new(), " autofocus", ""),
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
<title>Sign in to {host} · Postern</title><style>{STYLE}.site{{color:#6b7280;margin:0}}</style></head><body>\
<p class=\"site\">Postern · <span id=\"site\">{host}</span></p><h1>Sign in</h1>{error}\
<form method=\"post\" action=\"/.pomerium/sign_in\"><input type=\"hidden\" name=\"redirect_uri\" value=\"{redirect}\">\
<input type=\"hidden\" name=\"csrf_token\" value=\"{csrf}\">\
<label for=\"email\">Email</label><input id=\"email\" name=\"email\" type=\"email\" autocomplete=\"username\" required{email_value}{email_focus}>\
<label for=\"password\">Password</label><input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required{password_focus}>\
<button type=\"submit\">Sign in</button></form></body></html>",
        host = escape(site.host.split_once("://").map_or(site.host, |(_, h)| h)),
        redirect = escape(redirect),
        csrf = escape(csrf),
    )
}

/// A sign-in was posted while another user is signed in in this browser.
pub fn signed_in_as_other(current: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Already signed in · Postern</title><style>{STYLE}</style></head>\
<body><h1>Already signed in</h1><p>This browser is signed in as <strong>{current}</strong>. To use another account, \
<a href=\"/.pomerium/sign_out\">sign out</a> first, then sign in again.</p><p><a href=\"/.pomerium/\">Back to your servers</a></p></body></html>",
        current = escape(current),
    )
}

/// `/.pomerium/mcp/connect` asks before it sends the browser to the provider, so that no other
/// site can start connecting an upstream account in a signed-in browser.
pub fn connect(server: &str, user: &str, fields: &[(&str, &str)]) -> String {
    let hidden: String = fields
        .iter()
        .map(|(name, value)| {
            format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                escape(name),
                escape(value)
            )
        })
        .collect();
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
<title>Connect {server} · Postern</title><style>{STYLE} .deny{{background:#e5e7eb;color:#111}}</style></head><body>\
<h1>Connect your {server} account?</h1><p>Signed in as <strong>{user}</strong>. You will be sent to the provider of \
<strong>{server}</strong> to allow access; Postern then uses that account for <strong>{server}</strong> when <strong>{user}</strong> uses it.</p>\
<form method=\"post\" action=\"/.pomerium/mcp/connect\">{hidden}\
<button type=\"submit\" name=\"decision\" value=\"connect\">Connect</button></form>\
<p><a href=\"/.pomerium/\">Cancel</a></p></body></html>",
        server = escape(server),
        user = escape(user),
    )
}

/// Which server to connect, when an app's `/connect` names none and this host has several that
/// need the user's account: each `(name, link)` opens that server's confirmation page.
pub fn connect_chooser(user: &str, servers: &[(String, String)]) -> String {
    let items: String = servers
        .iter()
        .map(|(name, link)| format!("<li><a href=\"{}\">{}</a></li>", escape(link), escape(name)))
        .collect();
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
<title>Connect an account · Postern</title><style>{STYLE}</style></head><body>\
<h1>Which account do you want to connect?</h1><p>Signed in as <strong>{user}</strong>. These servers need your account \
at their provider:</p><ul>{items}</ul><p><a href=\"/.pomerium/\">Cancel</a></p></body></html>",
        user = escape(user),
    )
}

/// After sign-out: what it ended. `apps`: how many connected apps (client grants) the user
/// has, which keep working; `None` when nobody was signed in.
pub fn signed_out(apps: Option<usize>) -> String {
    let what = match apps {
        None => "<p>This browser was not signed in.</p>".to_owned(),
        Some(0) => {
            "<p>You are signed out of this browser. You have no connected apps.</p>".to_owned()
        }
        Some(n) => format!(
            "<p>You are signed out of this browser. Your {n} connected app{s} keep{verb} working; \
to stop {them}, sign in and revoke {them} on <a href=\"/.pomerium/apps\">Connected apps</a>.</p>",
            s = if n == 1 { "" } else { "s" },
            verb = if n == 1 { "s" } else { "" },
            them = if n == 1 { "it" } else { "them" },
        ),
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Signed out · Postern</title><style>{STYLE}</style></head>\
<body><h1>Signed out</h1>{what}<p><a href=\"/.pomerium/sign_in\">Sign in again</a></p></body></html>"
    )
}

/// Signed in, on to `target` (a path on this site): with a `SameSite=Strict` session cookie,
/// a redirect at the end of a trip through another site would arrive without the cookie (the
/// navigation counts as that site's), so this page of this site takes the browser on.
pub fn continue_to(target: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"0;url={target}\"><title>Signed in · Postern</title><style>{STYLE}</style></head>\
<body><h1>You are signed in</h1><p><a href=\"{target}\">Continue</a></p></body></html>",
        target = escape(target),
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

/// What the consent page says about the client.
pub struct ClientIdentity<'a> {
    /// The name it gave (chosen by the client itself unless `verified_by`).
    pub name: &'a str,
    /// The host the authorization code is sent to.
    pub redirect_host: &'a str,
    /// The host of its client ID metadata document, when it has one on an allowed domain.
    pub verified_by: Option<String>,
}

/// The consent page: approve (`decision=allow`) or deny (`decision=deny`) an MCP client's access
/// to a server; the original authorization parameters travel as hidden fields.
pub fn consent(
    client: &ClientIdentity<'_>,
    server: &str,
    resource: &str,
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
    let who = match &client.verified_by {
        Some(host) => format!(
            "<p class=\"client\">Client published by <strong>{}</strong>; access is sent to <strong>{}</strong>.</p>",
            escape(host),
            escape(client.redirect_host)
        ),
        None => format!(
            "<p class=\"client\"><span class=\"unverified\">Unverified</span> The name \u{201c}{}\u{201d} was chosen by the client itself. \
Access is sent to <strong>{}</strong>: allow only if you just started connecting an app that runs there.</p>",
            escape(client.name),
            escape(client.redirect_host)
        ),
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
<title>Allow access · Postern</title><style>{STYLE} .deny{{background:#e5e7eb;color:#111}} \
.unverified{{background:#fef3c7;color:#92400e;border-radius:4px;padding:0 .3rem;font-weight:600}}</style></head><body>\
<h1>Allow {client} to use {server}?</h1>{who}<p>Signed in as <strong>{user}</strong>. {client} will be able to call the tools of \
<strong>{server}</strong> (<code>{resource}</code>) as you, until you sign out or revoke it. It gets no other server.</p>\
<form method=\"post\" action=\"/.pomerium/mcp/authorize\">{hidden}\
<button type=\"submit\" name=\"decision\" value=\"allow\">Allow</button>\
<button type=\"submit\" name=\"decision\" value=\"deny\" class=\"deny\">Deny</button></form></body></html>",
        client = escape(client.name),
        server = escape(server),
        resource = escape(resource),
        user = escape(user),
    )
}

/// One MCP server a user may use, as `/.pomerium/mcp/routes` lists it and the portal shows it.
#[derive(serde::Serialize)]
pub struct ServerEntry {
    /// Display name.
    pub name: String,
    /// Optional description: left out when unset, never `null` (Pomerium's reference app
    /// validates optional fields as absent-or-string and rejects the whole list otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Optional logo, left out when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logo_url: Option<String>,
    /// The URL to paste into an MCP client.
    pub url: String,
    /// Whether the user's upstream account is connected (always true without upstream OAuth).
    pub connected: bool,
    /// Whether the server needs an upstream account (`upstream_oauth2` or discovered).
    pub needs_oauth: bool,
    /// For an aggregate route, its members and their state for this user (left out for
    /// other routes).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberEntry>,
}

/// A member of an aggregate route, as `/.pomerium/mcp/routes` and the portal show it.
#[derive(serde::Serialize)]
pub struct MemberEntry {
    /// Display name.
    pub name: String,
    /// The member's own URL.
    pub url: String,
    /// Its tool-name prefix in the aggregate.
    pub prefix: String,
    /// Whether the member's policy lets this user use it (always true: members a user may not
    /// use are not listed to them).
    pub allowed: bool,
    /// Whether the user's upstream account for it is connected (true without upstream OAuth).
    pub connected: bool,
    /// Whether the member needs an upstream account.
    pub needs_oauth: bool,
}

/// An aggregate route's members in the portal: each with its state, and Connect where the
/// user's upstream account is missing.
fn aggregate_members(members: &[MemberEntry]) -> String {
    if members.is_empty() {
        return String::new();
    }
    let mut items = String::new();
    for member in members {
        let state = match (member.allowed, member.needs_oauth, member.connected) {
            (false, _, _) => "<span class=\"state off\">Not available to you</span>".to_owned(),
            (true, false, _) => "<span class=\"state ready\">Ready</span>".to_owned(),
            (true, true, true) => "<span class=\"state ready\">Connected</span>".to_owned(),
            (true, true, false) => format!(
                "<span class=\"state off\">Not connected</span> <a class=\"button\" href=\"{origin}/.pomerium/mcp/connect?resource={resource}&amp;redirect_url=%2F.pomerium%2F\">Connect</a>",
                origin = escape(&crate::oauth_server::origin_of(&member.url).unwrap_or_default()),
                resource = escape(&crate::web::reply::encode(&member.url))
            ),
        };
        items.push_str(&format!(
            "<li class=\"member\">{name} <span class=\"muted\">(tools <code>{prefix}*</code>)</span> {state}</li>",
            name = escape(&member.name),
            prefix = escape(&member.prefix),
        ));
    }
    format!("<p class=\"muted\">One URL for these servers:</p><ul class=\"members\">{items}</ul>")
}

/// The portal at `/.pomerium/`: the signed-in user and their MCP servers, with Connect and
/// Disconnect for servers behind an upstream account. The only script copies a URL to the
/// clipboard; everything else is links and forms.
pub fn portal(user: &str, email: &str, servers: &[ServerEntry]) -> String {
    let mut rows = String::new();
    for server in servers {
        let state = match (server.needs_oauth, server.connected) {
            (false, _) => "<span class=\"state ready\">Ready</span>".to_owned(),
            (true, true) => "<span class=\"state ready\">Connected</span>".to_owned(),
            (true, false) => "<span class=\"state off\">Not connected</span>".to_owned(),
        };
        let action = match (server.needs_oauth, server.connected) {
            (false, _) => String::new(),
            (true, true) => format!(
                "<form method=\"post\" action=\"/.pomerium/disconnect\"><input type=\"hidden\" name=\"resource\" value=\"{url}\">\
<button type=\"submit\" class=\"secondary\">Disconnect</button></form>",
                url = escape(&server.url)
            ),
            // On the server's own host: that is where its upstream account is connected (with
            // a dedicated sign-in origin, the portal is elsewhere).
            (true, false) => format!(
                "<a class=\"button\" href=\"{origin}/.pomerium/mcp/connect?resource={resource}&amp;redirect_url=%2F.pomerium%2F\">Connect</a>",
                origin = escape(&crate::oauth_server::origin_of(&server.url).unwrap_or_default()),
                resource = escape(&crate::web::reply::encode(&server.url))
            ),
        };
        let description = server
            .description
            .as_deref()
            .map(|d| format!("<p class=\"muted\">{}</p>", escape(d)))
            .unwrap_or_default();
        let action = action + &aggregate_members(&server.members);
        rows.push_str(&format!(
            "<li class=\"server\"><div class=\"head\"><h2>{name}</h2>{state}</div>{description}\
<div class=\"url\"><code>{url}</code><button type=\"button\" class=\"copy secondary\" data-url=\"{url}\">Copy</button></div>{action}</li>",
            name = escape(&server.name),
            url = escape(&server.url),
        ));
    }
    if servers.is_empty() {
        rows.push_str("<li class=\"muted\">No MCP servers are available to you.</li>");
    }
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
<title>Your MCP servers · Postern</title><style>{STYLE}\
body{{max-width:44rem;margin:3rem auto}}ul{{list-style:none;padding:0}}\
.server{{border:1px solid #ddd;border-radius:10px;padding:1rem 1.2rem;margin:1rem 0}}\
.head{{display:flex;justify-content:space-between;align-items:center}}h2{{font-size:1.1rem;margin:0}}\
.state{{font-size:.85rem;padding:.15rem .6rem;border-radius:99px}}.ready{{background:#dcfce7;color:#166534}}.off{{background:#fef3c7;color:#92400e}}\
.url{{display:flex;gap:.5rem;align-items:center;margin:.6rem 0}}code{{flex:1;background:#f3f4f6;padding:.4rem .6rem;border-radius:6px;overflow-wrap:anywhere}}\
button,.button{{width:auto;margin:0;padding:.45rem .9rem;display:inline-block;text-decoration:none;border-radius:6px;background:#1d4ed8;color:#fff}}\
.secondary{{background:#e5e7eb;color:#111}}.muted{{color:#6b7280;margin:.3rem 0}}\
header{{display:flex;justify-content:space-between;align-items:baseline}}</style></head><body>\
<header><h1>Your MCP servers</h1><p>Signed in as <strong id=\"user\">{user}</strong> ({email}) · <a href=\"/.pomerium/apps\">Connected apps</a> · <a href=\"/.pomerium/sign_out\">Sign out</a></p></header>\
<p class=\"muted\">Paste a server's URL into your MCP client (Claude, ChatGPT, VS Code, MCP Inspector); it signs in here.</p>\
<ul>{rows}</ul>\
<script>for(const b of document.querySelectorAll('.copy'))b.onclick=()=>navigator.clipboard.writeText(b.dataset.url).then(()=>{{b.textContent='Copied'}});</script>\
</body></html>",
        user = escape(user),
        email = escape(email),
    )
}

/// What a browser gets on an MCP server's URL (a person opened it, or pasted it into the
/// address bar instead of an MCP client): what the URL is, how to add it to a client, and a
/// link to the portal. It says nothing about the server beyond its URL, which the visitor
/// already has, so it is the same signed in or not.
pub fn mcp_server_url(url: &str, portal: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
<title>MCP server · Postern</title><style>{STYLE}body{{max-width:40rem}}.site{{color:#6b7280;margin:0}}code{{background:#f3f4f6;padding:.1rem .3rem;border-radius:4px;overflow-wrap:anywhere}}</style></head><body>\
<p class=\"site\">Postern · <span id=\"site\">{host}</span></p><h1>This is an MCP server</h1>\
<p><code id=\"url\">{url}</code> is the address of an MCP (Model Context Protocol) server. It is meant for an MCP \
client, not a browser: add it to your client and the client signs you in here.</p>\
<ul><li>Claude Code: <code>claude mcp add --transport http NAME {url}</code></li>\
<li>Claude, ChatGPT: add a custom connector with this URL</li>\
<li>VS Code: <code>MCP: Add Server</code>, type HTTP, this URL</li>\
<li>MCP Inspector: transport Streamable HTTP, this URL</li></ul>\
<p><a href=\"{portal}\">Your MCP servers</a> lists the servers you may use.</p></body></html>",
        url = escape(url),
        portal = escape(portal),
        host = escape(
            url.split_once("://")
                .map_or(url, |(_, rest)| rest.split('/').next().unwrap_or(rest))
        ),
    )
}

/// `GET /.pomerium/sign_out`: a page with the sign-out button (signing out is a POST from this
/// site, so a link or image on another site cannot end anything). `csrf`: the session's form
/// token; `None` when nobody is signed in.
pub fn sign_out(user: Option<&str>, csrf: Option<&str>, redirect: Option<&str>) -> String {
    let (Some(user), Some(csrf)) = (user, csrf) else {
        return signed_out(None);
    };
    let redirect = redirect
        .map(|r| {
            format!(
                "<input type=\"hidden\" name=\"redirect_uri\" value=\"{}\">",
                escape(r)
            )
        })
        .unwrap_or_default();
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
<title>Sign out · Postern</title><style>{STYLE}</style></head><body><h1>Sign out</h1>\
<p>Signed in as <strong>{user}</strong>. Signing out ends this browser's session; your connected apps keep working \
(<a href=\"/.pomerium/apps\">manage them</a>).</p>\
<form method=\"post\" action=\"/.pomerium/sign_out\"><input type=\"hidden\" name=\"csrf_token\" value=\"{csrf}\">{redirect}\
<button type=\"submit\" id=\"sign-out\">Sign out of this browser</button></form></body></html>",
        user = escape(user),
        csrf = escape(csrf),
    )
}

/// One client grant on the Connected apps page.
pub struct AppEntry {
    /// The grant (token family) id, posted to revoke it.
    pub id: String,
    /// The name the client gave, or its client id.
    pub name: String,
    /// The host its authorization codes went to.
    pub redirect_host: String,
    /// The host of its client ID metadata document on an allowed domain; `None`: registered
    /// dynamically, so its name is its own claim.
    pub verified_by: Option<String>,
    /// The MCP server it may use (name, URL).
    pub server: (String, String),
    /// When it was authorized (ms).
    pub first_used: i64,
    /// When it last got a token (ms).
    pub last_used: i64,
}

/// The Connected apps page (`/.pomerium/apps`): each client grant with a Revoke button, and
/// "Sign out everywhere". Every form carries the session's form token.
pub fn connected_apps(user: &str, email: &str, apps: &[AppEntry], csrf: &str) -> String {
    let mut rows = String::new();
    for app in apps {
        let trust = match &app.verified_by {
            Some(host) => format!("<span class=\"state ready\">verified by {}</span>", escape(host)),
            None => "<span class=\"state off\" title=\"registered itself: its name is its own claim\">unverified</span>".to_owned(),
        };
        rows.push_str(&format!(
            "<li class=\"app\" data-grant=\"{id}\"><div class=\"head\"><h2>{name}</h2>{trust}</div>\
<p class=\"muted\">Sends you back to <strong>{host}</strong> · uses <strong>{server}</strong> (<code>{url}</code>)</p>\
<p class=\"muted\">Authorized {first} · last used {last}</p>\
<form method=\"post\" action=\"/.pomerium/apps/revoke\"><input type=\"hidden\" name=\"csrf_token\" value=\"{csrf}\">\
<input type=\"hidden\" name=\"grant\" value=\"{id}\"><button type=\"submit\" class=\"secondary revoke\">Revoke</button></form></li>",
            id = escape(&app.id),
            name = escape(&app.name),
            host = escape(&app.redirect_host),
            server = escape(&app.server.0),
            url = escape(&app.server.1),
            first = utc(app.first_used),
            last = utc(app.last_used),
            csrf = escape(csrf),
        ));
    }
    if apps.is_empty() {
        rows.push_str("<li class=\"muted\" id=\"no-apps\">No apps are connected.</li>");
    }
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
<title>Connected apps · Postern</title><style>{STYLE}\
body{{max-width:44rem;margin:3rem auto}}ul{{list-style:none;padding:0}}\
.app{{border:1px solid #ddd;border-radius:10px;padding:1rem 1.2rem;margin:1rem 0}}\
.head{{display:flex;justify-content:space-between;align-items:center}}h2{{font-size:1.1rem;margin:0}}\
.state{{font-size:.85rem;padding:.15rem .6rem;border-radius:99px}}.ready{{background:#dcfce7;color:#166534}}.off{{background:#fef3c7;color:#92400e}}\
button{{width:auto;margin:.3rem 0 0;padding:.45rem .9rem}}.secondary{{background:#e5e7eb;color:#111}}.muted{{color:#6b7280;margin:.3rem 0}}</style></head><body>\
<h1>Connected apps</h1><p>Signed in as <strong>{user}</strong> ({email}) · <a href=\"/.pomerium/\">Your servers</a></p>\
<p class=\"muted\">These MCP clients can use your servers until you revoke them; signing out of this browser does not stop them.</p>\
<ul>{rows}</ul>\
<form method=\"post\" action=\"/.pomerium/apps/sign_out_everywhere\"><input type=\"hidden\" name=\"csrf_token\" value=\"{csrf}\">\
<button type=\"submit\" id=\"sign-out-everywhere\">Sign out everywhere</button></form>\
<p class=\"muted\">Sign out everywhere ends every browser session of yours and revokes every app above.</p></body></html>",
        user = escape(user),
        email = escape(email),
        csrf = escape(csrf),
    )
}

/// A time (ms since the epoch) as `YYYY-MM-DD HH:MM UTC`.
fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days to civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60
    )
}

#[cfg(test)]
mod grant_page_tests {
    use super::*;

    #[test]
    fn times_are_shown_in_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(1_709_210_096_000), "2024-02-29 12:34 UTC");
    }

    #[test]
    fn dynamically_registered_clients_are_marked_unverified_and_names_are_escaped() {
        let app = |verified_by: Option<String>| AppEntry {
            id: "fam-1".into(),
            name: "<script>Claude</script>".into(),
            redirect_host: "127.0.0.1".into(),
            verified_by,
            server: ("SQLite".into(), "https://mcp.example.com/sqlite".into()),
            first_used: 0,
            last_used: 0,
        };
        let page = connected_apps("Ada", "ada@example.com", &[app(None)], "tok");
        assert!(page.contains(">unverified<"), "{page}");
        assert!(!page.contains("<script>Claude"), "{page}");
        assert!(page.contains("name=\"grant\" value=\"fam-1\""), "{page}");
        let page = connected_apps(
            "Ada",
            "ada@example.com",
            &[app(Some("apps.example".into()))],
            "tok",
        );
        assert!(page.contains("verified by apps.example"), "{page}");
        assert!(!page.contains(">unverified<"), "{page}");
    }
}
