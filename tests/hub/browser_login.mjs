// Drives a real login in headless Chromium: hub login page → identity provider (password, then
// TOTP) → hub → spawned JupyterLab. Saves screenshots. Used by tests/hub/test_browser.py.
//
// Environment: IDP_DIR (folder with node_modules/playwright-core), HUB_URL, LOGIN_USER,
// LOGIN_PASSWORD, LOGIN_OTP, SPKI_PIN (base64 SHA-256 of the server key, trusted for TLS),
// SHOTS (folder for screenshots), PROFILE (fresh Chromium profile folder).
import { createRequire } from 'node:module';
import path from 'node:path';

const env = process.env;
const require = createRequire(path.join(env.IDP_DIR, 'package.json'));
const { chromium } = require('playwright-core');

const browser = await chromium.launchPersistentContext(env.PROFILE, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync',
    // Trust exactly the deployment's server key, nothing else that is not publicly trusted.
    `--ignore-certificate-errors-spki-list=${env.SPKI_PIN}`,
  ],
  viewport: { width: 1280, height: 800 },
});
const shot = (name) => page.screenshot({ path: path.join(env.SHOTS, name) });
const page = browser.pages()[0] || await browser.newPage();
try {
  await page.goto(`${env.HUB_URL}/hub/login`);
  await page.click('a[href*="oauth_login"]');
  await page.waitForSelector('#password', { timeout: 30000 });
  await shot('hub-idp-password.png');
  await page.fill('#username', env.LOGIN_USER);
  await page.fill('#password', env.LOGIN_PASSWORD);
  await page.click('#submit');
  await page.waitForSelector('#otp', { timeout: 30000 });
  await shot('hub-idp-totp.png');
  await page.fill('#otp', env.LOGIN_OTP);
  await page.click('#submit');
  await page.waitForURL(new RegExp(`/user/${env.LOGIN_USER}/lab`), { timeout: 120000 });
  await page.waitForSelector('#jp-main-dock-panel', { timeout: 120000 });
  await page.waitForTimeout(1500);
  await shot('hub-lab.png');
  console.log(JSON.stringify({ url: page.url(), title: await page.title() }));
} catch (err) {
  await shot('hub-browser-failure.png').catch(() => {});
  console.error(`browser login failed at ${page.url()}: ${err.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
