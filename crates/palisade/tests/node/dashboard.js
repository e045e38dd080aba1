// The dashboard in a real browser (Debian's chromium via puppeteer-core): signs in with the
// admin token through the form, waits for the charts, the routes and the top identities, sends
// traffic to the proxy (from here, not from the page) and waits for it in the live decisions,
// reads what the action chart holds next to what /metrics reports, blocks an address through
// the block form, clicks an identity to explain it, and prints one JSON line with what it saw —
// including every request the page made that did not go to the admin listener (there must be
// none: no CDN) and every console error.
//
//   node dashboard.js ADMIN_URL TOKEN SHOT PROXY_URL
const puppeteer = require('puppeteer-core');

const [base, token, shot, proxy] = process.argv.slice(2);

(async () => {
  const browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--window-size=1366,900'],
  });
  const out = { foreign: [], errors: [] };
  try {
    const page = await browser.newPage();
    await page.setViewport({ width: 1366, height: 900 });
    const origin = new URL(base).origin;
    page.on('request', (r) => { if (!r.url().startsWith(origin) && !r.url().startsWith('data:')) out.foreign.push(r.url()); });
    page.on('console', (m) => { if (m.type() === 'error') out.errors.push(m.text()); });
    page.on('pageerror', (e) => out.errors.push(String(e)));
    await page.goto(base + '/dashboard', { waitUntil: 'domcontentloaded' });
    out.login_form = !!(await page.$('input[name=token]'));
    await page.type('input[name=token]', token);
    await Promise.all([page.waitForNavigation({ waitUntil: 'domcontentloaded' }), page.click('button')]);
    const cookie = (await page.cookies()).find((c) => c.name === 'palisade_dashboard');
    out.cookie = cookie ? { httpOnly: cookie.httpOnly, secure: cookie.secure, sameSite: cookie.sameSite } : null;
    await page.waitForSelector('#chart-actions canvas', { timeout: 15000 });
    await page.waitForFunction(() => document.querySelectorAll('#routes tbody tr').length > 0 &&
      document.querySelectorAll('#top tbody tr').length > 0, { timeout: 15000 });
    // Live decisions arrive as requests are sent (one flooding address).
    for (let i = 0; i < 12; i++) {
      await fetch(proxy, { headers: { 'x-forwarded-for': '203.0.113.9' } });
    }
    await page.waitForFunction(() => document.querySelectorAll('#live .row').length >= 3, { timeout: 20000 });
    // The traffic is over: after one refresh, each action's total in the chart against the
    // decisions /metrics counts by action (palisade_requests_total).
    await page.evaluate(() => refresh());
    out.chart = await page.evaluate(() => {
      const d = actionsChart.data, o = {};
      overview.actions.forEach((a, i) => { o[a] = d[i + 1].reduce((s, v) => s + (v || 0), 0); });
      return o;
    });
    out.metrics = await page.evaluate(async () => {
      const o = {};
      for (const l of (await (await fetch('/metrics')).text()).split('\n')) {
        const m = l.match(/^palisade_requests_total\{([^}]*)\} ([\d.e+]+)/);
        if (m) { const a = (m[1].match(/action="([^"]*)"/) || [])[1]; o[a] = (o[a] || 0) + Number(m[2]); }
      }
      return o;
    });
    // A block added in the form shows in the list.
    await page.select('#block-form select[name=dimension]', 'ip');
    await page.type('#block-form input[name=value]', '198.51.100.250');
    await page.type('#block-form input[name=reason]', 'from-the-dashboard');
    await page.click('#block-form button');
    await page.waitForFunction(() => document.querySelector('#blocks tbody').textContent.includes('198.51.100.250'), { timeout: 10000 });
    out.blocks = await page.$eval('#blocks tbody', (e) => e.textContent);
    out.status = await page.$eval('#status', (e) => e.textContent);
    out.routes = await page.$$eval('#routes tbody tr', (rs) => rs.map((r) => r.innerText));
    out.rules = await page.$$eval('#rules tbody tr', (rs) => rs.map((r) => r.innerText));
    out.top = await page.$$eval('#top tbody tr', (rs) => rs.map((r) => r.innerText));
    out.live = await page.$$eval('#live .row', (rs) => rs.map((r) => r.textContent));
    await page.click('#top tbody tr');
    await page.waitForFunction(() => { const t = document.querySelector('#explain-body').textContent; return t && t !== '…'; }, { timeout: 10000 });
    out.explain = await page.$eval('#explain-body', (e) => e.textContent);
    if (shot) await page.screenshot({ path: shot, fullPage: true });
  } catch (e) {
    out.failure = String(e);
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(out));
})();
