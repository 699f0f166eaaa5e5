import { defineConfig } from 'vitest/config';

// End-to-end: headless Debian chromium driven by playwright-core, the built UI served by the dev
// bridge in front of a real berthd (started by the test). See docs/ui.md.
export default defineConfig({
  test: {
    include: ['e2e/**/*.e2e.ts'],
    environment: 'node',
    testTimeout: 180_000,
    hookTimeout: 180_000,
    fileParallelism: false,
    reporters: ['verbose'],
    // One story: after a failed step the next ones only time out.
    bail: 1,
  },
});
