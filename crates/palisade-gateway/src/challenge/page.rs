//! The challenge page: small, self-contained (no request but its own), accessible. A Web
//! Worker searches for the proof-of-work (SHA-256 in plain JavaScript: `crypto.subtle` exists
//! only in secure contexts); without JavaScript a timed refresh takes the slower path.

use std::collections::BTreeMap;

use palisade_config::CHALLENGE_TEXTS;

/// What one page shows.
pub struct Page<'a> {
    /// The puzzle token.
    pub token: &'a str,
    /// Leading zero bits needed.
    pub bits: u8,
    /// Seconds the no-JavaScript path waits (0: no such path).
    pub nojs_wait: u64,
    /// The CSP nonce of the inline script.
    pub nonce: &'a str,
    /// Texts overridden by the config.
    pub texts: &'a BTreeMap<String, String>,
    /// The page's language tag.
    pub lang: &'a str,
    /// Whether the challenged request was not a GET/HEAD (its body is not replayed).
    pub was_post: bool,
}

/// HTML-escapes text for an element or a double-quoted attribute.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A text of the page: the configured one, else the default of `CHALLENGE_TEXTS`.
pub fn text<'a>(texts: &'a BTreeMap<String, String>, name: &str) -> &'a str {
    texts.get(name).map(String::as_str).unwrap_or_else(|| {
        CHALLENGE_TEXTS
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("", |(_, t)| *t)
    })
}

/// The worker: SHA-256 over `token:counter`, counting up until the hash has `bits` leading zero
/// bits; posts the counter.
const WORKER: &str = r#"
var K=new Uint32Array([0x428a2f98,0x71374491,0xb5c0fbcf,0xe9b5dba5,0x3956c25b,0x59f111f1,0x923f82a4,0xab1c5ed5,0xd807aa98,0x12835b01,0x243185be,0x550c7dc3,0x72be5d74,0x80deb1fe,0x9bdc06a7,0xc19bf174,0xe49b69c1,0xefbe4786,0x0fc19dc6,0x240ca1cc,0x2de92c6f,0x4a7484aa,0x5cb0a9dc,0x76f988da,0x983e5152,0xa831c66d,0xb00327c8,0xbf597fc7,0xc6e00bf3,0xd5a79147,0x06ca6351,0x14292967,0x27b70a85,0x2e1b2138,0x4d2c6dfc,0x53380d13,0x650a7354,0x766a0abb,0x81c2c92e,0x92722c85,0xa2bfe8a1,0xa81a664b,0xc24b8b70,0xc76c51a3,0xd192e819,0xd6990624,0xf40e3585,0x106aa070,0x19a4c116,0x1e376c08,0x2748774c,0x34b0bcb5,0x391c0cb3,0x4ed8aa4a,0x5b9cca4f,0x682e6ff3,0x748f82ee,0x78a5636f,0x84c87814,0x8cc70208,0x90befffa,0xa4506ceb,0xbef9a3f7,0xc67178f2]);
var W=new Uint32Array(64),H=new Uint32Array(8);
function sha(b,len){var n=((len+9+63)>>6)<<6;for(var i=len;i<n;i++)b[i]=0;b[len]=0x80;var bits=len*8;b[n-4]=bits>>>24;b[n-3]=bits>>>16&255;b[n-2]=bits>>>8&255;b[n-1]=bits&255;
H[0]=0x6a09e667;H[1]=0xbb67ae85;H[2]=0x3c6ef372;H[3]=0xa54ff53a;H[4]=0x510e527f;H[5]=0x9b05688c;H[6]=0x1f83d9ab;H[7]=0x5be0cd19;
for(var o=0;o<n;o+=64){for(var t=0;t<16;t++)W[t]=b[o+4*t]<<24|b[o+4*t+1]<<16|b[o+4*t+2]<<8|b[o+4*t+3];
for(t=16;t<64;t++){var x=W[t-15],y=W[t-2];W[t]=((x>>>7|x<<25)^(x>>>18|x<<14)^(x>>>3))+W[t-16]+((y>>>17|y<<15)^(y>>>19|y<<13)^(y>>>10))+W[t-7]|0;}
var a=H[0],c=H[1],d=H[2],e=H[3],f=H[4],g=H[5],h=H[6],k=H[7];
for(t=0;t<64;t++){var t1=k+((f>>>6|f<<26)^(f>>>11|f<<21)^(f>>>25|f<<7))+(f&g^~f&h)+K[t]+W[t]|0,t2=((a>>>2|a<<30)^(a>>>13|a<<19)^(a>>>22|a<<10))+(a&c^a&d^c&d)|0;k=h;h=g;g=f;f=e+t1|0;e=d;d=c;c=a;a=t1+t2|0;}
H[0]+=a;H[1]+=c;H[2]+=d;H[3]+=e;H[4]+=f;H[5]+=g;H[6]+=h;H[7]+=k;}}
function zeros(){var z=0;for(var i=0;i<8;i++){var w=H[i];if(w===0){z+=32;continue;}return z+Math.clz32(w);}return z;}
onmessage=function(m){var t=m.data.t,bits=m.data.bits,p=new TextEncoder().encode(t+":"),b=new Uint8Array(p.length+21+72);b.set(p);
for(var c=0;;c++){var s=String(c),l=p.length;for(var i=0;i<s.length;i++)b[l+i]=s.charCodeAt(i);sha(b,l+s.length);if(zeros()>=bits){postMessage(s);return;}}};
"#;

/// The page's script: starts the worker, reports a few browser facts with the answer, and goes
/// to the verify endpoint.
const SCRIPT: &str = r#"
(function(){var d=document,st=d.getElementById('st'),cfg=JSON.parse(d.getElementById('cfg').textContent);
if(!navigator.cookieEnabled){st.textContent=cfg.cookies;return;}
var moved=0;['pointermove','pointerdown','keydown','touchstart','scroll'].forEach(function(e){addEventListener(e,function(){moved++;},{passive:true});});
var started=Date.now();st.textContent=cfg.solving;
var w=new Worker(URL.createObjectURL(new Blob([d.getElementById('pw').textContent],{type:'text/javascript'})));
w.onmessage=function(m){var n=navigator,ua=n.userAgent||'',uad=n.userAgentData,brands=uad&&uad.brands?uad.brands.map(function(b){return b.brand;}).join(','):'';
var s={wd:n.webdriver===true?1:0,hl:/Headless/.test(ua)||/Headless/.test(brands)?1:0,pl:n.plugins?n.plugins.length:-1,lg:n.languages?n.languages.length:-1,
tz:(Intl.DateTimeFormat().resolvedOptions().timeZone||'').slice(0,64),sw:screen.width||0,sh:screen.height||0,dm:n.deviceMemory||0,ev:moved,ms:Date.now()-started};
st.textContent=cfg.done;
location.replace('/.palisade/challenge/verify?t='+encodeURIComponent(cfg.t)+'&n='+m.data+'&s='+encodeURIComponent(JSON.stringify(s)));};
w.postMessage({t:cfg.t,bits:cfg.bits});})();
"#;

/// The page as HTML.
pub fn render(p: &Page<'_>) -> String {
    let t = |name| escape(text(p.texts, name));
    let cfg = serde_json::json!({
        "t": p.token,
        "bits": p.bits,
        "solving": text(p.texts, "solving"),
        "done": text(p.texts, "done"),
        "cookies": "Cookies are off: this check needs one cookie to let you through. Turn cookies on for this site and reload.",
    })
    .to_string()
    // Safe inside a <script> element: no `</script>` can close it.
    .replace('<', "\\u003c");
    let refresh = if p.nojs_wait > 0 {
        format!(
            "<noscript><meta http-equiv=\"refresh\" content=\"{};url=/.palisade/challenge/wait?t={}\"></noscript>",
            p.nojs_wait,
            escape(p.token)
        )
    } else {
        String::new()
    };
    let nojs = if p.nojs_wait > 0 {
        format!("<noscript><p>{}</p></noscript>", t("nojs"))
    } else {
        String::new()
    };
    let post = if p.was_post {
        format!("<p>{}</p>", t("post"))
    } else {
        String::new()
    };
    format!(
        "<!doctype html>\n<html lang=\"{lang}\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta name=\"robots\" content=\"noindex\">{refresh}<title>{title}</title>\
         <style>body{{font:16px/1.5 system-ui,sans-serif;max-width:36rem;margin:10vh auto;padding:0 1rem;color:#222;background:#fafafa}}\
         @media (prefers-color-scheme:dark){{body{{color:#eee;background:#181818}}}}h1{{font-size:1.4rem}}</style></head>\
         <body><main><h1>{title}</h1><p>{body}</p>{post}<p id=\"st\" role=\"status\" aria-live=\"polite\"></p>{nojs}</main>\
         <script type=\"application/json\" id=\"cfg\">{cfg}</script>\
         <script type=\"text/plain\" id=\"pw\">{worker}</script>\
         <script nonce=\"{nonce}\">{script}</script></body></html>\n",
        title = t("title"),
        body = t("body"),
        worker = WORKER,
        script = SCRIPT,
        nonce = escape(p.nonce),
        lang = escape(p.lang),
    )
}

/// The texts for a request: the configured ones, overlaid with those of the first language in
/// `Accept-Language` that `locales` has (a full tag, then its primary language), and that
/// language's tag.
pub fn texts_for<'a>(
    texts: &BTreeMap<String, String>,
    locales: &'a BTreeMap<String, BTreeMap<String, String>>,
    accept_language: Option<&str>,
) -> (BTreeMap<String, String>, &'a str) {
    let mut out = texts.clone();
    let chosen = accept_language.and_then(|al| {
        al.split(',')
            .take(16)
            .filter_map(|part| {
                let mut it = part.split(';');
                let tag = it.next()?.trim().to_ascii_lowercase();
                let refused = it.any(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .and_then(|q| q.trim().parse::<f32>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                (!refused && !tag.is_empty()).then_some(tag)
            })
            .find_map(|tag| {
                locales.get_key_value(&tag).or_else(|| {
                    let primary = tag.split('-').next().unwrap_or("");
                    locales.get_key_value(primary)
                })
            })
    });
    match chosen {
        Some((lang, t)) => {
            out.extend(t.iter().map(|(k, v)| (k.clone(), v.clone())));
            (out, lang.as_str())
        }
        None => (out, "en"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_escapes_what_it_shows_and_closes_no_script_early() {
        let mut texts = BTreeMap::new();
        texts.insert("title".to_owned(), "<b>Prüfung</b>".to_owned());
        let html = render(&Page {
            token: "abc</script><x>",
            bits: 16,
            nojs_wait: 5,
            nonce: "n0nce",
            texts: &texts,
            lang: "de",
            was_post: true,
        });
        assert!(html.contains("&lt;b&gt;Prüfung&lt;/b&gt;"));
        assert!(!html.contains("abc</script>"));
        assert!(html.contains("abc\\u003c/script>"));
        assert!(
            html.contains(
                "content=\"5;url=/.palisade/challenge/wait?t=abc&lt;/script&gt;&lt;x&gt;\""
            )
        );
        assert!(html.contains("Your form was not sent"));
        assert!(html.contains("<script nonce=\"n0nce\">"));
        let no_wait = render(&Page {
            token: "t",
            bits: 16,
            nojs_wait: 0,
            nonce: "n",
            texts: &BTreeMap::new(),
            lang: "en",
            was_post: false,
        });
        assert!(!no_wait.contains("http-equiv=\"refresh\""));
        assert!(no_wait.contains("Checking your browser"));
    }

    #[test]
    fn texts_follow_accept_language() {
        let mut locales = BTreeMap::new();
        let de: BTreeMap<String, String> = [("title".to_owned(), "Wir prüfen".to_owned())].into();
        let pt_br: BTreeMap<String, String> =
            [("title".to_owned(), "Verificando".to_owned())].into();
        locales.insert("de".to_owned(), de);
        locales.insert("pt-br".to_owned(), pt_br);
        let base: BTreeMap<String, String> = [("body".to_owned(), "Base".to_owned())].into();
        let pick = |al| {
            let (t, lang) = texts_for(&base, &locales, al);
            (
                t.get("title").cloned().unwrap_or_default(),
                lang.to_owned(),
                t.get("body").cloned(),
            )
        };
        assert_eq!(
            pick(Some("de-CH, en;q=0.8")),
            ("Wir prüfen".into(), "de".into(), Some("Base".into()))
        );
        assert_eq!(pick(Some("pt-BR,pt;q=0.9")).1, "pt-br");
        assert_eq!(pick(Some("fr, de;q=0")).1, "en");
        assert_eq!(pick(Some("fr, de;q=0.5")).1, "de");
        assert_eq!(
            pick(None),
            (String::new(), "en".into(), Some("Base".into()))
        );
    }
}
