// Types of herald.mjs: the same declarations as herald.d.ts.
export * from './herald.js';
export { default } from './herald.js';
