import { defineConfig } from 'vitest/config';
import { svelte } from '@sveltejs/vite-plugin-svelte';

// `npm run dev` serves the UI with hot reload; /engine goes to a dev bridge already running
// (`npm run bridge -- --socket …`, port BERTH_BRIDGE_PORT, default 7780).
const bridge = `http://127.0.0.1:${process.env.BERTH_BRIDGE_PORT ?? '7780'}`;

export default defineConfig({
  plugins: [svelte()],
  clearScreen: false,
  server: {
    host: '127.0.0.1',
    port: 5173,
    strictPort: true,
    // ws: the exec terminal's WebSocket goes through the same proxy.
    proxy: { '/engine': { target: bridge, changeOrigin: true, ws: true } },
  },
  build: { outDir: 'dist', target: 'es2022', sourcemap: true },
  test: {
    include: ['tests/**/*.test.ts'],
    environment: 'node',
  },
});
