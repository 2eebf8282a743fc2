// ES module entry of the Herald client: `import { Herald } from '/herald.mjs'`.
// The implementation is the classic script herald.js beside this file (one source, no
// build step); importing it runs it, and it defines globalThis.Herald.
import './herald.js';

export const Herald = globalThis.Herald;
export const HeraldError = Herald.HeraldError;
export const Subscription = Herald.Subscription;
export const backoffDelay = Herald.backoffDelay;
export const closeAction = Herald.closeAction;
export const buildUrl = Herald.buildUrl;
export const buildHttpUrl = Herald.buildHttpUrl;
export default Herald;
