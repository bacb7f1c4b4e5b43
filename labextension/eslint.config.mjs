// ESLint for the lab extension: the recommended JavaScript and TypeScript rules; formatting is
// prettier's (eslint-config-prettier turns off the rules that would disagree with it).
import js from '@eslint/js';
import prettier from 'eslint-config-prettier';
import globals from 'globals';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['lib/', 'node_modules/', '../atomscale_lab/labextension/'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: { globals: { ...globals.browser, ...globals.node } },
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_' }],
      eqeqeq: ['error', 'smart'],
      // JupyterLab extensions keep command ids in a namespace (the extension template does)
      '@typescript-eslint/no-namespace': 'off',
    },
  },
  prettier,
);
