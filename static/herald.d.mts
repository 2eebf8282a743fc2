// Types of herald.mjs: the same declarations as herald.d.ts.
import { Herald } from './herald.js';
export * from './herald.js';
export default Herald;
