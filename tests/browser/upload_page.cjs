// Drives the customer upload page in real headless Chromium (Debian's
// chromium, through playwright-core) for tests/test_upload_page.py.
// Input: one JSON argument {url, expiredUrl, file, artifacts, cutAt}.
// Output: one JSON line on stdout with what was seen.
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
        if (!offline && !out.cut && s.value / s.max >= args.cutAt) {
          // Cut the connection mid-way, as a dropped Wi-Fi would.
          await context.setOffline(true);
          offline = true;
          out.cut = s.value / s.max;
          setTimeout(async () => {
            await page.screenshot({ path: path.join(args.artifacts, "upload-page-offline.png"), fullPage: true });
            await context.setOffline(false);
            offline = false;
          }, 2500);
        }
        if (s.state === "done" || s.state === "error") { out.final = s; break; }
      }
      if (Date.now() > deadline) { out.final = s; out.timeout = true; break; }
      await new Promise(r => setTimeout(r, 20));
    }
    await page.screenshot({ path: path.join(args.artifacts, "upload-page-done.png"), fullPage: true });
    const expired = await page.goto(args.expiredUrl);
    out.expired = { status: expired.status(), h1: await page.textContent("h1"), text: await page.textContent("body") };
    await page.screenshot({ path: path.join(args.artifacts, "upload-page-expired.png"), fullPage: true });
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch(e => { console.error(e); process.exit(1); });
