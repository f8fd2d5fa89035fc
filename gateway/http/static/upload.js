// The customer upload page's script (served as /assets/upload.js, so the
// page's CSP allows no inline script). It checks each file before sending
// it (type by extension, size, number of files: the reasons in the page's
// language, from the #msgs block the server rendered), sends it in chunks
// (or straight to the store with presigned part URLs), resumes after a
// dropped connection, and shows the server's refusals in the same words.
"use strict";
const cfg = JSON.parse(document.getElementById("cfg").textContent);
const msgs = JSON.parse(document.getElementById("msgs").textContent);
const base = location.pathname.replace(/\/+$/, "");
const sleep = ms => new Promise(r => setTimeout(r, ms));

// A message with its {fields} filled in (the server rendered it translated).
function say(key, fields) {
  return (msgs[key] || key).replace(/\{(\w+)\}/g, (m, k) => (fields && k in fields) ? String(fields[k]) : m);
}

async function call(method, path, body) {
  const r = await fetch(base + path, {method, headers: body ? {"Content-Type": "application/json"} : {},
                                      body: body ? JSON.stringify(body) : undefined, cache: "no-store"});
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    const e = new Error(data.error || ("HTTP " + r.status));
    e.status = r.status; e.code = data.code || "";
    throw e;
  }
  return data;
}

const b64 = bytes => btoa(String.fromCharCode(...bytes));

// MD5 (RFC 1321) of a part, for its Content-MD5, which every S3 store checks
// (WebCrypto has no MD5).
function md5(bytes) {
  const K = new Int32Array(64), S = [7, 12, 17, 22, 5, 9, 14, 20, 4, 11, 16, 23, 6, 10, 15, 21];
  for (let i = 0; i < 64; i++) K[i] = Math.floor(Math.abs(Math.sin(i + 1)) * 4294967296);
  const n = bytes.length, words = (((n + 8) >>> 6) + 1) * 16, M = new Int32Array(words);
  for (let i = 0; i < n; i++) M[i >> 2] |= bytes[i] << ((i % 4) * 8);
  M[n >> 2] |= 0x80 << ((n % 4) * 8);
  M[words - 2] = n * 8;
  M[words - 1] = Math.floor(n / 536870912);
  const h = [0x67452301, 0xefcdab89 | 0, 0x98badcfe | 0, 0x10325476];
  for (let off = 0; off < words; off += 16) {
    let [A, B, C, D] = h;
    for (let i = 0; i < 64; i++) {
      let F, g;
      if (i < 16) { F = (B & C) | (~B & D); g = i; }
      else if (i < 32) { F = (D & B) | (~D & C); g = (5 * i + 1) % 16; }
      else if (i < 48) { F = B ^ C ^ D; g = (3 * i + 5) % 16; }
      else { F = C ^ (B | ~D); g = (7 * i) % 16; }
      F = (F + A + K[i] + M[off + g]) | 0;
      const s = S[(i >> 4) * 4 + (i % 4)];
      [A, D, C] = [D, C, B];
      B = (B + ((F << s) | (F >>> (32 - s)))) | 0;
    }
    h[0] = (h[0] + A) | 0; h[1] = (h[1] + B) | 0; h[2] = (h[2] + C) | 0; h[3] = (h[3] + D) | 0;
  }
  return b64(h.flatMap(w => [w & 255, (w >>> 8) & 255, (w >>> 16) & 255, (w >>> 24) & 255]));
}

// The checksums a presigned part URL binds, so the store refuses other bytes:
// Content-MD5 (checked by every S3 store) and the SHA-256 (checked by AWS S3;
// "" where the browser has no WebCrypto, i.e. plain http off loopback).
async function checksums(blob) {
  const bytes = new Uint8Array(await blob.arrayBuffer());
  const sha256 = (window.crypto && crypto.subtle) ? b64(new Uint8Array(await crypto.subtle.digest("SHA-256", bytes))) : "";
  return {md5: md5(bytes), sha256};
}

// PUT a piece: to the gateway (url relative to the page), or straight to the
// store with a presigned part URL and the headers it was signed with.
function putChunk(url, headers, blob, onprogress) {
  return new Promise((resolve, reject) => {
    const x = new XMLHttpRequest();
    x.open("PUT", url);
    for (const [k, v] of Object.entries(headers)) x.setRequestHeader(k, v);
    x.upload.onprogress = e => onprogress(e.loaded);
    x.onload = () => x.status < 300 ? resolve() : reject(Object.assign(new Error("HTTP " + x.status), {status: x.status}));
    x.onerror = () => reject(new Error("network"));
    x.onabort = () => reject(new Error("aborted"));
    x.send(blob);
  });
}

// Retries what failed for want of a network; gives up on what the server refused.
async function retrying(row, fn) {
  let wait = 500;
  for (;;) {
    try { return await fn(); }
    catch (e) {
      if (e.status && e.status < 500 && e.status !== 408 && e.status !== 429) throw e;
      row.setStatus(say("retrying", {percent: Math.floor(100 * row.bar.value / row.bar.max)}), "retrying");
      await sleep(wait);
      wait = Math.min(wait * 2, 4000);
    }
  }
}

const list = document.getElementById("list");
const announce = document.getElementById("announce");
const done = document.getElementById("done");
let sentFiles = cfg.usedFiles, sentBytes = cfg.usedBytes, active = 0, succeeded = 0;

function addRow(file) {
  const li = document.createElement("li");
  li.className = "file";
  const name = document.createElement("div");
  name.className = "name";
  name.textContent = file.name;
  const bar = document.createElement("progress");
  bar.max = Math.max(file.size, 1); bar.value = 0;
  bar.setAttribute("aria-label", say("progress", {name: file.name}));
  const st = document.createElement("div");
  st.className = "status";
  li.append(name, bar, st);
  list.append(li);
  return {
    bar,
    setStatus(text, kind) {
      st.textContent = text; st.className = "status " + (kind || ""); li.dataset.state = kind || "";
      bar.hidden = kind === "error";  // a refused file has no progress to show
      // Errors and finished files are announced; progress is shown, not read out at every percent.
      if (kind === "error" || kind === "done") announce.textContent = text;
    },
  };
}

function extension(name) {
  const m = /\.([^.\/\\]+)$/.exec(name.trim());
  return m ? m[1].toLowerCase() : "";
}

// What the page can tell before sending: the reason in plain words, or null.
function check(file) {
  const name = {name: file.name};
  if (cfg.extensions.length && !cfg.extensions.includes(extension(file.name))) return say("type", name);
  if (file.size === 0) return say("empty", name);
  if (file.size > cfg.maxFileSize) return say("tooLarge", name);
  if (cfg.maxFiles && sentFiles + 1 > cfg.maxFiles) return say("limitFiles", name);
  if (cfg.maxBytes && sentBytes + file.size > cfg.maxBytes) return say("limitBytes", name);
  return null;
}

// The server's refusal, in the same words as the page's own checks.
function refusal(e, file) {
  const name = {name: file.name};
  const code = e.code || "";
  if (code === "program") return say("program", name);
  if (code === "type") return say("typeContents", name);
  if (code === "malware") return say("malware", name);
  if (code === "empty") return say("empty", name);
  if (code === "size") return say("tooLarge", name);
  if (code === "limit-files") return say("limitFiles", name);
  if (code === "limit-bytes") return say("limitBytes", name);
  if (code === "refused") return say("refused", {name: file.name, reason: e.message});
  if (e.status === 410 || e.status === 403) return say("expired");
  if (e.status === 503) return say("unavailable");
  return say("failed", name);
}

async function upload(file, row) {
  const reason = check(file);
  if (reason) { row.setStatus(reason, "error"); return false; }
  sentFiles += 1; sentBytes += file.size;
  const memo = "upload:" + base + ":" + file.name + ":" + file.size + ":" + file.lastModified;
  try {
    let s = null;
    const known = localStorage.getItem(memo);
    if (known) { s = await call("GET", "/files/" + known).catch(() => null); }
    if (!s || s.done) { s = await retrying(row, () => call("POST", "/files", {name: file.name, size: file.size, type: file.type})); }
    localStorage.setItem(memo, s.uploadId);
    let received = new Set(s.received);
    const size = i => Math.min(s.chunkSize, file.size - i * s.chunkSize);
    let sent = [...received].reduce((a, i) => a + size(i), 0);
    row.bar.value = sent;
    for (let i = 0; i < s.chunks; i++) {
      if (received.has(i)) continue;
      row.setStatus(say("uploading", {percent: Math.floor(100 * sent / file.size)}), "uploading");
      const from = i * s.chunkSize;
      let failed = false;
      await retrying(row, async () => {
        if (failed) {
          // After a cut the chunk may have arrived after all: ask first.
          const now = await call("GET", "/files/" + s.uploadId);
          received = new Set(now.received);
          if (received.has(i)) return;
        }
        failed = true;  // until the PUT below succeeds
        const blob = file.slice(from, from + size(i));
        const progress = loaded => { row.bar.value = sent + loaded; };
        if (s.direct) {
          // A fresh short-lived URL for each try, straight to the store.
          const part = await call("POST", "/files/" + s.uploadId + "/chunks/" + i + "/url", await checksums(blob));
          await putChunk(part.url, part.headers, blob, progress);
        } else {
          await putChunk(base + "/files/" + s.uploadId + "/chunks/" + i,
                         {"Content-Type": "application/octet-stream"}, blob, progress);
        }
      });
      sent += size(i);
      row.bar.value = sent;
      row.setStatus(say("uploading", {percent: Math.floor(100 * sent / file.size)}), "uploading");
    }
    row.setStatus(say("finishing"), "uploading");
    await retrying(row, () => call("POST", "/files/" + s.uploadId + "/complete"));
    localStorage.removeItem(memo);
    row.bar.value = row.bar.max;
    row.setStatus(say("done"), "done");
    return true;
  } catch (e) {
    // A refused file no longer counts against the link (the server released it).
    if (e.code && !e.code.startsWith("limit")) { sentFiles -= 1; sentBytes -= file.size; }
    localStorage.removeItem(memo);
    row.setStatus(refusal(e, file), "error");
    return false;
  }
}

async function uploadAll(files) {
  done.hidden = true;
  const rows = files.map(f => { const r = addRow(f); r.setStatus(say("waiting"), "waiting"); return r; });
  active += files.length;
  let ok = 0;
  for (let i = 0; i < files.length; i++) { if (await upload(files[i], rows[i])) ok += 1; }
  succeeded += ok;
  active -= files.length;
  // The end of a batch with something received: say what happens next.
  if (active === 0 && succeeded > 0) { done.hidden = false; done.focus(); }
}

const input = document.getElementById("files");
input.addEventListener("change", e => { uploadAll([...e.target.files]); input.value = ""; });
// "Add more files": back to the picker. A mouse click opens it at once; from
// the keyboard (a click with no pointer, detail 0) the picker gets the focus
// and Space or Enter opens it, as everywhere else on the page.
document.getElementById("more").addEventListener("click", e => {
  input.scrollIntoView({block: "center"});
  input.focus();
  if (e.detail > 0) input.click();
});
const drop = document.getElementById("drop");
drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", e => { e.preventDefault(); drop.classList.remove("over"); uploadAll([...e.dataTransfer.files]); });
