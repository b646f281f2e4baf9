//! Browser and HTTP plumbing the services share: responses, forms and their anti-forgery
//! pair, cookies, round trips through other sites, the pages, untrusted text, rate limits, and
//! outbound fetches of URLs others chose. Depends on no service.

pub(crate) mod cookies;
pub(crate) mod forms;
pub(crate) mod limiter;
pub(crate) mod pages;
pub(crate) mod reply;
pub(crate) mod round_trip;
pub(crate) mod safe_http;
pub(crate) mod untrusted;
