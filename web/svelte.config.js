// The console is a static single-page app: adapter-static with an index.html fallback that the
// gateway serves for every client route under /console/.
import adapter from '@sveltejs/adapter-static';
import { vitePreprocess } from '@sveltejs/vite-plugin-svelte';

// CONSOLE_OUT: build elsewhere (the drift test compares such a build with the committed one).
const out = process.env.CONSOLE_OUT ?? '../gateway/webroot';

export default {
  preprocess: vitePreprocess(),
  kit: {
    adapter: adapter({
      pages: out, assets: out, fallback: 'index.html', precompress: true, strict: true
    }),
    paths: { base: '/console', relative: false },
    // A fixed version keeps the build byte-for-byte reproducible (the default is the build time);
    // hashed asset names already tell browsers when a file changed.
    version: { name: 'console', pollInterval: 0 },
    output: { bundleStrategy: 'single' },
    appDir: '_app'
  }
};
