// A client-only app: the gateway serves index.html for every route and the data comes from the API.
export const ssr = false;
export const prerender = false;
