// A real browser for the challenge tests: Debian's chromium driven by puppeteer-core (no
// browser download). Opens URL, lets the page do what it does, and prints one JSON line:
// { url, body, title, cookies } once the page has left Palisade's challenge (or after the
// timeout). Writes a screenshot of the challenge page to SHOT.
//
//   node browser.js URL SHOT MODE
//
// MODE: `default` (puppeteer's defaults: headless, navigator.webdriver set), `profile` (a
// user-data dir, no automation switches, a desktop Chrome user agent, pointer and key events
// while the page works), `nojs` (JavaScript disabled: the timed refresh path).
const puppeteer = require('puppeteer-core');
const fs = require('fs');
const os = require('os');
const path = require('path');

const [url, shot, mode = 'default'] = process.argv.slice(2);
const CHROME = 'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36';

(async () => {
  const args = ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'];
  const opts = { executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true, args };
  if (mode === 'profile') {
    opts.userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'palisade-profile-'));
    opts.ignoreDefaultArgs = ['--enable-automation'];
    args.push('--disable-blink-features=AutomationControlled', '--lang=en-US', '--window-size=1366,768');
  }
  const browser = await puppeteer.launch(opts);
  try {
    const page = await browser.newPage();
    if (mode === 'profile') {
      await page.setUserAgent(CHROME, {
        brands: [{ brand: 'Chromium', version: '131' }, { brand: 'Google Chrome', version: '131' }],
        fullVersion: '131.0.0.0', platform: 'Linux', platformVersion: '', architecture: 'x86',
        model: '', mobile: false,
      });
    }
    if (mode === 'nojs') await page.setJavaScriptEnabled(false);
    // A person: the pointer keeps moving from the moment the page opens (a person's hand is
    // on the mouse while a page loads), so the answer never races ahead of the first event
    // however slowly the screenshot is taken on a busy machine.
    let moving = mode === 'profile';
    const hand = (async () => {
      for (let i = 0; moving; i++) {
        await page.mouse.move(100 + (i % 20) * 12, 100 + (i % 15) * 9).catch(() => {});
        if (i % 10 === 5) await page.keyboard.press('Shift').catch(() => {});
        await new Promise((r) => setTimeout(r, 15));
      }
    })();
    await page.goto(url, { waitUntil: 'domcontentloaded' });
    const title = await page.title();
    if (shot) await page.screenshot({ path: shot }).catch(() => {});
    const deadline = Date.now() + 30000;
    // Done when a loaded page that is not the challenge shows something (evaluate throws while
    // a navigation is under way: then look again).
    while (Date.now() < deadline) {
      const here = page.url();
      const left = await page
        .evaluate((t) => document.readyState === 'complete' && document.title !== t &&
          !!document.body && document.body.innerText.length > 0, title)
        .catch(() => false);
      if (left && !here.includes('/.palisade/')) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    moving = false;
    await hand;
    const body = await page.evaluate(() => document.body ? document.body.innerText : '').catch(() => '');
    const cookies = (await page.cookies()).map((c) => c.name);
    console.log(JSON.stringify({ url: page.url(), title, body, cookies }));
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.log(JSON.stringify({ error: String(e) }));
  process.exit(1);
});
