// Drives every page a person sees in one headless Chromium (Debian's
// chromium through playwright-core) for tests/test_pages.py: the customer
// upload page (what it takes, a file refused before sending, a file the
// server refuses, a file sent: keyboard only), and the agent pages. Each page
// is checked with axe-core, injected into the page.
// Input: one JSON argument {upload, files: {wrongType, renamedProgram, good},
// agent: [{name, url, user, lang, keyboardRefresh}], artifacts}.
// Output: one JSON line on stdout with what was seen on each page.
"use strict";
const path = require("path");
const fs = require("fs");
const modules = path.join(__dirname, "..", "servers", "node", "node_modules");
const { chromium } = require(path.join(modules, "playwright-core"));
const AXE = fs.readFileSync(path.join(modules, "axe-core", "axe.min.js"), "utf8");

const FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];

// axe-core's violations of impact serious or critical (WCAG 2.x A and AA and best practice).
// Evaluated through the DevTools protocol: the page's CSP (rightly) refuses
// an injected <script>.
async function axe(page) {
  if (!(await page.evaluate(() => !!window.axe))) await page.evaluate(AXE + "\n;true");
  const result = await page.evaluate(async () => await window.axe.run(document, { resultTypes: ["violations"] }));
  return result.violations.filter(v => v.impact === "serious" || v.impact === "critical")
    .map(v => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map(n => n.html).slice(0, 3) }));
}

async function facts(page) {
  return page.evaluate(() => ({
    lang: document.documentElement.lang,
    title: document.title,
    h1: (document.querySelector("h1") || {}).textContent || "",
    text: document.body.innerText,
    reference: (document.getElementById("reference") || {}).textContent || "",
  }));
}

// Tab (and nothing else) until the element with id ``id`` has the focus.
async function tabTo(page, id, limit = 30) {
  for (let i = 0; i < limit; i++) {
    await page.keyboard.press("Tab");
    if (await page.evaluate(want => document.activeElement && document.activeElement.id === want, id)) return true;
  }
  return false;
}

// Space on the focused file picker, and the chooser it opens. Headless
// Chromium now and then opens no chooser for the key press (seen only right
// after a full-page screenshot, about one run in four): up to two more
// tries, from Tab again. The count is reported (chooserRetries).
let chooserRetries = 0;
async function openChooser(page, id) {
  for (let attempt = 0; ; attempt++) {
    try {
      const [chooser] = await Promise.all([page.waitForEvent("filechooser", { timeout: 5000 }),
                                           page.keyboard.press("Space")]);
      return chooser;
    } catch (e) {
      if (attempt >= 2) throw e;
      chooserRetries += 1;
      await page.bringToFront();
      await page.evaluate(() => { document.activeElement && document.activeElement.blur(); });
      if (!(await tabTo(page, id))) throw new Error(id + " cannot be reached with Tab");
    }
  }
}

// Choose ``file`` with the keyboard alone: Tab to the picker, Space opens it.
async function chooseByKeyboard(page, file) {
  await page.evaluate(() => { document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0); });
  if (!(await tabTo(page, "files"))) throw new Error("the file picker cannot be reached with Tab");
  await (await openChooser(page, "files")).setFiles(file);
}

async function row(page, n) {
  const li = page.locator("#list li.file").nth(n);
  await li.locator(".status.error, .status.done").waitFor({ timeout: 60000 });
  return { state: await li.getAttribute("data-state"), text: await li.locator(".status").textContent() };
}

async function main() {
  const args = JSON.parse(process.argv[2]);
  const shot = (page, name) => page.screenshot({ path: path.join(args.artifacts, name + ".png"), fullPage: true });
  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: FLAGS, headless: true });
  const out = { upload: {}, agent: {} };
  try {
    // -- the customer upload page -------------------------------------------
    const context = await browser.newContext({ viewport: { width: 900, height: 900 } });
    const page = await context.newPage();
    const requests = [];
    page.on("request", r => requests.push(r.method() + " " + new URL(r.url()).pathname.replace(/^\/upload\/[^/]+/, "")));
    const cspErrors = [];
    page.on("console", m => { if (/Content Security Policy/i.test(m.text())) cspErrors.push(m.text()); });
    const first = await page.goto(args.upload);
    out.upload.status = first.status();
    out.upload.csp = first.headers()["content-security-policy"];
    out.upload.page = await facts(page);
    out.upload.takes = await page.evaluate(() => Object.fromEntries(
      ["types", "max-size", "max-files", "expires", "recipient"].map(id => [id, document.getElementById(id).textContent])));
    out.upload.axeEmpty = await axe(page);
    await shot(page, "pages-upload-empty");

    // Refused before anything is sent: its extension is not on the list.
    await chooseByKeyboard(page, args.files.wrongType);
    out.upload.wrongType = await row(page, 0);
    out.upload.postsAfterWrongType = requests.filter(r => r.startsWith("POST")).length;

    // Refused by the server: a program renamed .pdf (its bytes decide).
    await chooseByKeyboard(page, args.files.renamedProgram);
    out.upload.renamedProgram = await row(page, 1);
    out.upload.axeRefused = await axe(page);
    await shot(page, "pages-upload-refused");

    // A good file, slowed so the page can be seen while it sends.
    await page.route("**/chunks/**", async route => { await new Promise(r => setTimeout(r, 120)); await route.continue(); });
    await chooseByKeyboard(page, args.files.good);
    const li = page.locator("#list li.file").nth(2);
    await page.waitForFunction(() => {
      const r = document.querySelectorAll("#list li.file")[2];
      const bar = r && r.querySelector("progress");
      return r && r.dataset.state === "uploading" && bar.value > bar.max * 0.3;
    }, null, { timeout: 60000, polling: 20 });
    out.upload.uploadingText = await li.locator(".status").textContent();
    out.upload.progressLabel = await li.locator("progress").getAttribute("aria-label");
    await shot(page, "pages-upload-uploading");
    out.upload.good = await row(page, 2);
    await page.locator("#done").waitFor({ state: "visible", timeout: 30000 });
    out.upload.done = await page.evaluate(() => ({
      text: document.getElementById("done").innerText,
      focused: document.activeElement && document.activeElement.id,
      announced: document.getElementById("announce").textContent,
    }));
    out.upload.axeDone = await axe(page);
    await shot(page, "pages-upload-done");
    // "Add more files", reached and pressed with the keyboard, takes the focus
    // back to the picker, which Space opens.
    if (!(await tabTo(page, "more"))) throw new Error("Add more files cannot be reached with Tab");
    await page.keyboard.press("Enter");
    out.upload.moreFocusesPicker = await page.evaluate(() => document.activeElement.id === "files");
    out.upload.moreOpensPicker = (await openChooser(page, "files")).isMultiple();
    out.upload.cspErrors = cspErrors;
    out.upload.chooserRetries = chooserRetries;
    await context.close();

    // -- the agent pages ------------------------------------------------------
    for (const visit of args.agent) {
      const headers = {};
      if (visit.user) headers["X-Forwarded-User"] = visit.user;
      if (visit.lang) headers["Accept-Language"] = visit.lang;
      const ctx = await browser.newContext({ extraHTTPHeaders: headers, viewport: { width: 900, height: 700 } });
      const p = await ctx.newPage();
      const errors = [];
      p.on("console", m => { if (/Content Security Policy/i.test(m.text())) errors.push(m.text()); });
      const response = await p.goto(visit.url);
      const seen = { status: response.status(), ...(await facts(p)), axe: await axe(p) };
      seen.stylesApplied = await p.evaluate(() => getComputedStyle(document.body).maxWidth !== "none");
      seen.cspErrors = errors;
      if (visit.shot) await shot(p, visit.shot);
      if (visit.keyboardRefresh) {
        // Keyboard alone: Tab to the button and press Enter; the new link's page comes back.
        const reached = await p.evaluate(() => {
          const b = document.querySelector("form button"); b.id = "refresh"; return !!b;
        });
        seen.refreshReached = reached && await tabTo(p, "refresh");
        const [after] = await Promise.all([p.waitForNavigation(), p.keyboard.press("Enter")]);
        seen.refreshed = { status: after.status(), ...(await facts(p)), axe: await axe(p) };
      }
      out.agent[visit.name] = seen;
      await ctx.close();
    }
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch(e => { console.error(e); process.exit(1); });
