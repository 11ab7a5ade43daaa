// The sign-in page: a link of the form /login#key=fk_... (what `make run` prints) signs in at once; the key
// travels in the fragment, which browsers never send to the server or put in its logs.
const params = new URLSearchParams(location.hash.slice(1));
const key = params.get("key");
if (key) {
  history.replaceState(null, "", location.pathname + location.search);
  document.getElementById("key").value = key;
  document.getElementById("login-form").requestSubmit();
}
