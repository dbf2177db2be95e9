// Drives code-server in chromium: open main.py, put the cursor at its end, ask
// for an inline suggestion (Alt+\), read the ghost text, compare it with the
// server's answer, accept it (Tab), save, and check the file on disk.
// argv: url file expected.json chromium screenshot.png
import { createRequire } from "node:module";
import * as fs from "node:fs";

const require = createRequire(process.env.NODE_PATH + "/");
const { chromium } = require("playwright-core");
const [url, file, expectedPath, executablePath, screenshot] = process.argv.slice(2);
const expected = JSON.parse(fs.readFileSync(expectedPath, "utf8")).text;
const before = fs.readFileSync(file, "utf8");

const browser = await chromium.launch({
  executablePath,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run"],
});
const page = await browser.newPage({ viewport: { width: 1000, height: 480 } });
let failed = null;
try {
  await page.goto(url);
  await page.waitForSelector(".monaco-workbench", { timeout: 60000 });
  // The model loads when the extension starts; the status item then names it.
  await page.waitForFunction(() => document.querySelector(".statusbar")?.innerText.includes("tiny-model"), null, { timeout: 90000 });
  await page.keyboard.press("Control+P");
  await page.keyboard.type("main.py");
  await page.keyboard.press("Enter");
  await page.waitForSelector(".monaco-editor .view-lines", { timeout: 30000 });
  await page.click(".monaco-editor .view-lines");
  await page.keyboard.press("Control+End");
  await page.keyboard.press("Alt+Backslash");
  await page.waitForSelector(".ghost-text-decoration, .ghost-text", { timeout: 60000 });
  await page.waitForTimeout(300);
  const ghost = await page.$$eval(".ghost-text-decoration, .ghost-text", (nodes) =>
    nodes.map((n) => n.textContent).join("").replace(/\u00a0/g, " "));
  console.log(`ghost text: ${JSON.stringify(ghost)}`);
  console.log(`expected:   ${JSON.stringify(expected)}`);
  await page.screenshot({ path: screenshot });
  if (ghost !== expected) throw new Error("the ghost text differs from the server's answer");
  await page.keyboard.press("Tab");
  await page.keyboard.press("Control+S");
  await page.waitForTimeout(1000);
  const after = fs.readFileSync(file, "utf8");
  if (after !== before + expected) throw new Error(`after Tab + save the file is ${JSON.stringify(after)}`);
  console.log("accepted with Tab: the file ends with the suggestion");
} catch (error) {
  failed = error;
  await page.screenshot({ path: screenshot.replace(/\.png$/, "-failed.png") }).catch(() => {});
} finally {
  await browser.close();
}
if (failed) {
  console.error(`e2e-vscode FAILED: ${failed.message}`);
  process.exit(1);
}
console.log("e2e-vscode passed; screenshot:", screenshot);
