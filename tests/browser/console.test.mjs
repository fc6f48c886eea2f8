// Drives the order service's admin console in Debian's headless Chromium
// with playwright-core. tests/e2e/tests/slow/admin_console.rs starts the stack,
// makes the data and runs this script; it exits 0 when every step held.
//
//   CONSOLE_URL           the console, http://127.0.0.1:PORT/admin/
//   ADMIN_TOKEN           the stack's admin token
//   CONSOLE_TEST_MODE     replay (default): a wrong token is refused and the
//                         prompt comes back; with the right one the dead letter
//                         DEAD_LETTER_ID (and the product LOW_STOCK_PRODUCT_ID,
//                         if given) shows, its payload opens (EXPECT_IN_PAYLOAD),
//                         Replay takes it off the list, and no call failed.
//                         outage: the inventory is down; the banner names the
//                         failed call, its 502 and the service.
//                         retry: the FAILED order ORDER_ID opens from the
//                         address, its timeline shows its failure, Retry saga
//                         starts attempt 2, and its dead letters are a click away.
//   CONSOLE_SCREENSHOT    where to save a screenshot once the data shows (optional)
//   FAILURE_SCREENSHOT    where to save one if a step fails (optional)
//   CHROMIUM              the browser [/usr/bin/chromium]
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined) throw new Error(`set ${name}`);
  return value;
};

const consoleUrl = env('CONSOLE_URL');
const adminToken = env('ADMIN_TOKEN');
const mode = env('CONSOLE_TEST_MODE', 'replay');
const STEP_TIMEOUT = 20_000;

// Every step waits for what it expects (Playwright's waiting), never for a
// fixed time; this only ends a run that hangs altogether.
setTimeout(() => {
  console.error('the browser test did not finish within 120 s');
  process.exit(3);
}, 120_000).unref();

let step = 'starting Chromium';
const log = (text) => {
  step = text;
  console.log(`- ${text}`);
};

function assert(condition, message) {
  if (!condition) throw new Error(message);
}

const byTestId = (page, id) => page.locator(`[data-testid="${id}"]`);

async function enterToken(page, token) {
  await byTestId(page, 'token-dialog').waitFor({ state: 'visible' });
  await byTestId(page, 'token-input').fill(token);
  await byTestId(page, 'token-submit').click();
}

async function replayScenario(page) {
  const deadLetter = env('DEAD_LETTER_ID');
  const product = process.env.LOW_STOCK_PRODUCT_ID;

  log('the console asks for the token; a wrong one is refused and asked again');
  await enterToken(page, 'not-the-admin-token');
  const refused = byTestId(page, 'token-error');
  await refused.waitFor({ state: 'visible' });
  const why = await refused.textContent();
  assert(/refused/.test(why), `the prompt should say the token was refused, it says: ${why}`);

  log('with the admin token the dialog closes');
  await enterToken(page, adminToken);
  await byTestId(page, 'token-dialog').waitFor({ state: 'hidden' });

  log(`dead letter ${deadLetter} shows with its reason`);
  const row = byTestId(page, `dead-letter-${deadLetter}`);
  await row.waitFor({ state: 'visible' });
  const reason = await byTestId(page, `reason-${deadLetter}`).textContent();
  assert(reason.trim().length > 0, 'the dead letter shows no reason');
  console.log(`  reason: ${reason}`);

  log('its payload opens');
  await byTestId(page, `payload-${deadLetter}`).locator('summary').click();
  const payload = byTestId(page, `payload-${deadLetter}`).locator('pre');
  await payload.waitFor({ state: 'visible' });
  const expected = process.env.EXPECT_IN_PAYLOAD;
  if (expected) {
    const text = await payload.textContent();
    assert(text.includes(expected), `the payload should contain ${expected}: ${text}`);
  }

  if (product) {
    log(`low-stock product ${product} shows`);
    await byTestId(page, `product-${product}`).waitFor({ state: 'visible' });
  }

  log('readiness, breakers and consumers of all three services show');
  for (const service of ['order', 'inventory', 'notification']) {
    const ready = byTestId(page, `ready-${service}`);
    await ready.waitFor({ state: 'visible' });
    assert((await ready.textContent()) === 'ready', `${service} is not shown ready`);
  }
  await byTestId(page, 'breaker-order-inventory-http').waitFor({ state: 'visible' });

  log('the links to Swagger UI, RabbitMQ and MailDev are there');
  for (const link of ['docs-order', 'docs-inventory', 'docs-notification', 'link-rabbitmq', 'link-maildev']) {
    const href = await byTestId(page, link).getAttribute('href');
    assert(href, `no ${link} link`);
  }

  log('no call failed');
  assert(await byTestId(page, 'error-banner').isHidden(),
    `the error banner shows: ${await byTestId(page, 'error-banner').textContent()}`);

  if (process.env.CONSOLE_SCREENSHOT) {
    log(`screenshot to ${process.env.CONSOLE_SCREENSHOT}`);
    await page.screenshot({ path: process.env.CONSOLE_SCREENSHOT, fullPage: true });
  }

  log('Replay sends it back and it leaves the list of DEAD letters');
  await byTestId(page, `replay-${deadLetter}`).click();
  await row.waitFor({ state: 'detached' });
  const notice = byTestId(page, 'notice');
  await notice.waitFor({ state: 'visible' });
  console.log(`  notice: ${await notice.textContent()}`);
  assert(await byTestId(page, 'error-banner').isHidden(),
    `the error banner shows: ${await byTestId(page, 'error-banner').textContent()}`);
}

async function outageScenario(page) {
  log('with the admin token the dialog closes');
  await enterToken(page, adminToken);
  await byTestId(page, 'token-dialog').waitFor({ state: 'hidden' });

  log('the banner names the failed call, its status and the service');
  const banner = byTestId(page, 'error-banner');
  await banner.waitFor({ state: 'visible' });
  await page.locator('#error-list li', { hasText: '/admin/services/inventory/ready' }).waitFor();
  const text = await banner.textContent();
  console.log(`  banner: ${text}`);
  assert(/\/admin\/services\/inventory\/ready → 502 bad_gateway: the inventory service at .* could not be reached/.test(text),
    `the banner should name the call, the 502 and the inventory service: ${text}`);

  log('in place of its data the inventory\'s sections say why; the others still show');
  await byTestId(page, 'failed-dead-inventory').waitFor({ state: 'visible' });
  await byTestId(page, 'failed-low-stock').waitFor({ state: 'visible' });
  assert((await byTestId(page, 'ready-inventory').textContent()) === 'no answer', 'the inventory is not shown down');
  const ready = byTestId(page, 'ready-order');
  await ready.waitFor({ state: 'visible' });
  assert((await ready.textContent()) === 'ready', 'the order service is not shown ready');
  if (process.env.CONSOLE_SCREENSHOT) {
    await page.screenshot({ path: process.env.CONSOLE_SCREENSHOT, fullPage: true });
  }
}

async function retryScenario(page) {
  const orderId = env('ORDER_ID');
  log('with the admin token the dialog closes');
  await enterToken(page, adminToken);
  await byTestId(page, 'token-dialog').waitFor({ state: 'hidden' });

  log('the order opened from the address shows its timeline and its failure');
  await byTestId(page, 'order-timeline').locator('[data-testid="timeline-status_changed"]', { hasText: 'FAILED' }).waitFor();
  const summary = await byTestId(page, 'order-summary').textContent();
  assert(summary.includes(orderId) && summary.includes('FAILED'), `the summary shows: ${summary}`);
  assert(summary.includes('attempt 1'), `the summary shows no attempt: ${summary}`);

  log('Retry saga runs it again as attempt 2');
  await byTestId(page, 'retry-saga').click();
  await byTestId(page, 'notice').filter({ hasText: 'attempt 2' }).waitFor({ state: 'visible' });
  await byTestId(page, 'order-summary').filter({ hasText: 'attempt 2' }).waitFor();
  await byTestId(page, 'order-timeline').locator('[data-testid="timeline-status_changed"]', { hasText: 'FAILED → PENDING' }).waitFor();
  if (process.env.CONSOLE_SCREENSHOT) {
    await page.screenshot({ path: process.env.CONSOLE_SCREENSHOT, fullPage: true });
  }

  log('the order\'s dead letters are a click away');
  await byTestId(page, 'order-dead-letters').click();
  await page.waitForFunction((id) => document.querySelector('[data-testid="dead-letter-order"]').value === id, orderId);
  assert((await byTestId(page, 'error-banner').isHidden()),
    `the error banner shows: ${await byTestId(page, 'error-banner').textContent()}`);
}

const profile = mkdtempSync(join(tmpdir(), 'console-test-chromium-'));
let context;
let failed = false;
try {
  // A fresh profile, and nothing that would reach out to the network: on a
  // closed network Chromium otherwise waits on its own background calls.
  context = await chromium.launchPersistentContext(profile, {
    executablePath: env('CHROMIUM', '/usr/bin/chromium'),
    headless: true,
    viewport: { width: 1280, height: 900 },
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  const page = context.pages()[0] ?? await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT);
  const pageErrors = [];
  page.on('pageerror', (error) => pageErrors.push(error.message));
  page.on('console', (message) => {
    if (message.type() === 'error') console.log(`  browser console: ${message.text()}`);
  });

  log(`loading ${consoleUrl}`);
  const response = await page.goto(consoleUrl);
  assert(response && response.ok(), `GET ${consoleUrl} answered ${response && response.status()}`);

  if (mode === 'replay') await replayScenario(page);
  else if (mode === 'outage') await outageScenario(page);
  else if (mode === 'retry') await retryScenario(page);
  else throw new Error(`unknown CONSOLE_TEST_MODE ${mode}`);

  assert(pageErrors.length === 0, `the page threw: ${pageErrors.join('; ')}`);
  console.log(`ok: ${mode}`);
} catch (error) {
  failed = true;
  console.error(`FAILED while ${step}: ${error.message}`);
  if (context && process.env.FAILURE_SCREENSHOT) {
    const page = context.pages()[0];
    if (page) {
      await page.screenshot({ path: process.env.FAILURE_SCREENSHOT, fullPage: true }).catch(() => {});
      console.error(`screenshot of the page: ${process.env.FAILURE_SCREENSHOT}`);
    }
  }
} finally {
  await context?.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
