//! Click and open tracking (SPEC 7.2) with the streaming HTML rewriter lol_html, never
//! regular expressions: every `<a href>` with an http(s) target becomes a signed `/t/c/`
//! link unless the anchor carries `no-track-connect` (which is then removed); an open pixel
//! goes at the end of `<body>` (or of the document). Text bodies are never touched.

use lol_html::html_content::ContentType;
use lol_html::{element, rewrite_str, RewriteStrSettings};

/// Decodes the entities an attribute value may carry (`&amp;`, `&quot;`, numeric ...).
pub fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let end = tail.find(';').filter(|e| *e <= 10);
        let decoded = end.and_then(|e| {
            let name = &tail[1..e];
            let ch = match name {
                "amp" => Some('&'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "lt" => Some('<'),
                "gt" => Some('>'),
                n if n.starts_with("#x") || n.starts_with("#X") => u32::from_str_radix(&n[2..], 16)
                    .ok()
                    .and_then(char::from_u32),
                n if n.starts_with('#') => n[1..].parse().ok().and_then(char::from_u32),
                _ => None,
            }?;
            Some((ch, e + 1))
        });
        match decoded {
            Some((ch, len)) => {
                out.push(ch);
                rest = &tail[len..];
            }
            None => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Rewrites `html`: `click(url)` gives the tracked URL for an original one; `pixel` is the
/// open-pixel URL. Malformed HTML is passed through as lol_html sees it.
pub fn rewrite(
    html: &str,
    click: Option<&dyn Fn(&str) -> String>,
    pixel: Option<&str>,
) -> Result<String, String> {
    let saw_body = std::cell::Cell::new(false);
    let img = pixel.map(|p| format!("<img src=\"{p}\" width=\"1\" height=\"1\" alt=\"\" style=\"display:block;border:0;width:1px;height:1px\">"));
    let mut settings = RewriteStrSettings::new();
    if let Some(click) = click {
        settings = settings.append_element_content_handler(element!("a[href]", move |el| {
            if el.has_attribute("no-track-connect") {
                el.remove_attribute("no-track-connect");
                return Ok(());
            }
            let href = decode_entities(el.get_attribute("href").unwrap_or_default().trim());
            let lower = href.to_ascii_lowercase();
            if lower.starts_with("http://") || lower.starts_with("https://") {
                el.set_attribute("href", &click(&href))?;
            }
            Ok(())
        }));
    }
    if let Some(img) = &img {
        let saw = &saw_body;
        settings = settings.append_element_content_handler(element!("body", move |el| {
            saw.set(true);
            el.append(img, ContentType::Html);
            Ok(())
        }));
    }
    let mut out = rewrite_str(html, settings).map_err(|e| e.to_string())?;
    if let (Some(img), false) = (&img, saw_body.get()) {
        out.push_str(img);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(url: &str) -> String {
        format!("https://t.example/c/{}", url.len())
    }

    #[test]
    fn rewrites_http_links_only_and_honours_no_track_connect() {
        let html = r#"<p><a href="https://shop.example/a?x=1&amp;y=2">A</a>
<a no-track-connect href="https://keep.example/">B</a>
<a href="/relative">C</a><a href="mailto:x@example.org">D</a><a href=" HTTP://caps.example/ ">E</a></p>"#;
        let seen = std::cell::RefCell::new(Vec::new());
        let click = |u: &str| {
            seen.borrow_mut().push(u.to_string());
            track(u)
        };
        let out = rewrite(html, Some(&click), None).unwrap();
        assert_eq!(
            *seen.borrow(),
            ["https://shop.example/a?x=1&y=2", "HTTP://caps.example/"]
        );
        assert!(
            out.contains(r#"href="https://keep.example/""#) && !out.contains("no-track-connect")
        );
        assert!(
            out.contains(r#"href="/relative""#) && out.contains(r#"href="mailto:x@example.org""#)
        );
    }

    #[test]
    fn pixel_goes_inside_body_or_at_the_end() {
        let out = rewrite(
            "<html><body><p>x</p></body></html>",
            None,
            Some("https://t/o/1"),
        )
        .unwrap();
        assert!(out.contains(r#"<p>x</p><img src="https://t/o/1""#), "{out}");
        assert!(out.ends_with("</body></html>"));
        let out = rewrite("<p>fragment</p>", None, Some("https://t/o/1")).unwrap();
        assert!(out.starts_with("<p>fragment</p><img"));
    }

    #[test]
    fn entities_decode() {
        assert_eq!(
            decode_entities("a&amp;b&#38;c&#x26;d&quot;&bogus;&"),
            "a&b&c&d\"&bogus;&"
        );
    }
}
