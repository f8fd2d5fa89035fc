// Drives the customer upload page in real headless Chromium (Debian's
// chromium, through playwright-core) for tests/test_upload_page.py.
// Input: one JSON argument {url, expiredUrl, file, artifacts, cutAt, prefix,
// secondFile}: cutAt null uploads without a cut; secondFile is dropped after
// the first is done (a refusal is expected: the invitation's limit).
// Output: one JSON line on stdout with what was seen ("seconds": from the
// file's selection to "done").
"use strict";
const path = require("path");
const { chromium } = require(path.join(__dirname, "..", "servers", "node", "node_modules", "playwright-core"));

const FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];

async function main() {
  const args = JSON.parse(process.argv[2]);
  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: FLAGS, headless: true });
  const out = { samples: [], sawRetrying: false, cut: null };
  try {
    const context = await browser.newContext();
    const page = await context.newPage();
    const first = await page.goto(args.url);
    out.pageStatus = first.status();
    out.title = await page.title();
    const shot = name => path.join(args.artifacts, (args.prefix || "upload-page") + "-" + name + ".png");
    const started = Date.now();
    await page.setInputFiles("#files", args.file);
    let offline = false;
    const deadline = Date.now() + 120000;
    for (;;) {
      const s = await page.evaluate(() => {
        const bar = document.querySelector("progress");
        const row = document.querySelector(".file");
        return bar ? { value: bar.value, max: bar.max, state: row.dataset.state || "",
                       text: row.querySelector(".status").textContent } : null;
      });
      if (s) {
        out.samples.push(s.value / s.max);
        if (s.state === "retrying") out.sawRetrying = true;
        if (args.cutAt != null && !offline && !out.cut && s.value / s.max >= args.cutAt) {
          // Cut the connection mid-way, as a dropped Wi-Fi would.
          await context.setOffline(true);
          offline = true;
          out.cut = s.value / s.max;
          setTimeout(async () => {
            await page.screenshot({ path: shot("offline"), fullPage: true });
            await context.setOffline(false);
            offline = false;
          }, 2500);
        }
        if (s.state === "done" || s.state === "error") { out.final = s; out.seconds = (Date.now() - started) / 1000; break; }
      }
      if (Date.now() > deadline) { out.final = s; out.timeout = true; break; }
      await new Promise(r => setTimeout(r, 20));
    }
    await page.screenshot({ path: shot("done"), fullPage: true });
    if (args.secondFile) {
      await page.setInputFiles("#files", args.secondFile);
      const row = page.locator(".file").nth(1);
      await row.locator(".status.error, .status.done").waitFor({ timeout: 60000 });
      out.second = { state: await row.getAttribute("data-state"), text: await row.locator(".status").textContent() };
      await page.screenshot({ path: shot("limit"), fullPage: true });
    }
    const expired = await page.goto(args.expiredUrl);
    out.expired = { status: expired.status(), h1: await page.textContent("h1"), text: await page.textContent("body") };
    await page.screenshot({ path: shot("expired"), fullPage: true });
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch(e => { console.error(e); process.exit(1); });
